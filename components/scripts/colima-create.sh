#!/usr/bin/env bash
# colima-create.sh: create (or start) the Colima VM of one dev node and authorize our deploy key
# for root in it, so the common install/deploy path can reach it as root over its address.
#
# Runs on:  the operator's Mac (pulumi_command local.Command, cwd = project root).
# Args:     none.
# Env:      PROFILE            Colima profile (Lima instance colima-PROFILE); never "default"
#           CPUS, MEMORY_GIB, DISK_GIB   sizing, used only when the VM is created
#           ARCH               aarch64 (vz boots nothing else)
#           VM_TYPE            vz
#           ROSETTA            1 = --vz-rosetta, 0 = no Rosetta
#           DEPLOY_PUBLIC_KEY  OpenSSH public key line authorized for root in the VM
#           COLIMA             colima executable (default: colima)
#           ADDRESS_TIMEOUT    seconds to wait for the col0 address after start (default 180)
#           POLL_INTERVAL      seconds between address polls (default 3)
# Stdin:    unused.
# Stdout:   colima's own output goes to stderr; stdout is `host-key ssh-ed25519 AAAA...` (the VM's
#           /etc/ssh/ssh_host_ed25519_key.pub, read through `colima ssh`, Lima's own channel into
#           the VM, so the install's first connection over the network address pins it), then
#           the profile's `colima ls --json` line (with its address) as the last line.
# Exit:     0 ok; 1 colima failed or no address in time; 2 bad environment.
# Idempotent: a running profile is left as is, a stopped one is started (with its saved
# configuration), an absent one is created. The key is appended only if missing.
set -euo pipefail

COLIMA=${COLIMA:-colima}
ADDRESS_TIMEOUT=${ADDRESS_TIMEOUT:-180}
POLL_INTERVAL=${POLL_INTERVAL:-3}

die() {
	echo "colima-create: $2" >&2
	exit "$1"
}

require_number() {
	[[ ${!1:-} =~ ^[1-9][0-9]*$ ]] || die 2 "$1 must be a positive integer, got '${!1:-}'"
}

check_environment() {
	[[ ${PROFILE:-} =~ ^[a-z0-9][a-z0-9-]*$ ]] || die 2 "PROFILE must be [a-z0-9-]+, got '${PROFILE:-}'"
	case "$PROFILE" in
	default | colima | colima-*) die 2 "PROFILE '$PROFILE' is reserved for the user's own Colima VMs" ;;
	esac
	require_number CPUS
	require_number MEMORY_GIB
	require_number DISK_GIB
	[[ ${VM_TYPE:-} == vz ]] || die 2 "VM_TYPE must be vz, got '${VM_TYPE:-}'"
	# colima start --arch x86_64 --vm-type vz silently falls back to QEMU emulation.
	[[ ${ARCH:-} == aarch64 ]] || die 2 "ARCH must be aarch64 with vz (use ROSETTA=1 for x86_64 binaries), got '${ARCH:-}'"
	[[ ${ROSETTA:-} == 0 || ${ROSETTA:-} == 1 ]] || die 2 "ROSETTA must be 0 or 1, got '${ROSETTA:-}'"
	[[ ${DEPLOY_PUBLIC_KEY:-} != *$'\n'* &&
		${DEPLOY_PUBLIC_KEY:-} =~ ^(ssh-ed25519|ecdsa-sha2-nistp(256|384|521)|ssh-rsa)\ [A-Za-z0-9+/=]+(\ .*)?$ ]] ||
		die 2 "DEPLOY_PUBLIC_KEY is not a single OpenSSH public key line"
	[[ $ADDRESS_TIMEOUT =~ ^[0-9]+$ ]] || die 2 "ADDRESS_TIMEOUT must be a number of seconds"
	[[ $POLL_INTERVAL =~ ^[0-9]+$ ]] || die 2 "POLL_INTERVAL must be a number of seconds"
}

# The profile's line of `colima ls --json` (all profiles, one compact JSON object per line),
# empty when the profile does not exist. `colima ls -p` is not used: it fails for absent profiles.
profile_line() {
	local listing
	listing=$("$COLIMA" list --json) || die 1 "'colima list --json' failed"
	grep -F "\"name\":\"$PROFILE\"," <<<"$listing" || true
}

json_field() {
	sed -n "s/.*\"$1\":\"\\([^\"]*\\)\".*/\\1/p" <<<"$2"
}

# Colima releases with a separate container-runtime disk size the VM's own disk with
# --root-disk (colima PR #1413; newConf: `if conf.RootDisk > 0 { l.Disk = ... }`) and --disk only
# sizes that runtime disk, which --runtime none never creates. Older releases have no --root-disk
# and size the VM with --disk. Asking `start --help` keeps one script right for both.
has_root_disk_flag() {
	"$COLIMA" start --help 2>/dev/null | grep -q -- '--root-disk'
}

create_vm() {
	local flags=(
		start --profile "$PROFILE"
		--vm-type "$VM_TYPE" --arch "$ARCH"
		--cpu "$CPUS" --memory "$MEMORY_GIB" --disk "$DISK_GIB"
		--network-address --runtime none --ssh-config=false
	)
	if has_root_disk_flag; then
		flags+=(--root-disk "$DISK_GIB")
	fi
	[[ $ROSETTA == 1 ]] && flags+=(--vz-rosetta)
	echo "colima-create: creating profile $PROFILE" >&2
	"$COLIMA" "${flags[@]}" >&2 || die 1 "colima start --profile $PROFILE failed"
}

start_vm() {
	echo "colima-create: starting stopped profile $PROFILE ($1)" >&2
	"$COLIMA" start --profile "$PROFILE" >&2 || die 1 "colima start --profile $PROFILE failed"
}

wait_for_address() {
	local waited=0 line
	while :; do
		line=$(profile_line)
		if [[ -n $(json_field address "$line") ]]; then
			printf '%s\n' "$line"
			return 0
		fi
		if ((waited >= ADDRESS_TIMEOUT)); then
			die 1 "profile $PROFILE has no address after ${ADDRESS_TIMEOUT}s (status '$(json_field status "$line")'); was it created without --network-address? colima list: ${line:-<absent>}"
		fi
		sleep "$POLL_INTERVAL"
		waited=$((waited + (POLL_INTERVAL > 0 ? POLL_INTERVAL : 1)))
	done
}

# The key travels on stdin; the file path is an argument so the append logic is one place.
authorize_deploy_key() {
	# shellcheck disable=SC2016 # expanded by sh in the VM, not here
	local append='set -eu
umask 077
IFS= read -r key
mkdir -p "$(dirname "$1")"
touch "$1"
grep -qxF -- "$key" "$1" || printf "%s\n" "$key" >>"$1"'
	printf '%s\n' "$DEPLOY_PUBLIC_KEY" |
		"$COLIMA" ssh --profile "$PROFILE" -- sudo sh -c "$append" sh /root/.ssh/authorized_keys >&2 ||
		die 1 "could not authorize the deploy key for root in profile $PROFILE"
}

# The VM's own ed25519 host key, as `host-key <type> <base64>`.
print_host_key() {
	local key type body
	key=$("$COLIMA" ssh --profile "$PROFILE" -- cat /etc/ssh/ssh_host_ed25519_key.pub) ||
		die 1 "could not read the host key of profile $PROFILE through colima ssh"
	read -r type body _ <<<"$key"
	[[ $type == ssh-ed25519 && $body =~ ^[A-Za-z0-9+/]+={0,2}$ ]] ||
		die 1 "profile $PROFILE has no ed25519 host key in /etc/ssh/ssh_host_ed25519_key.pub"
	printf 'host-key %s %s\n' "$type" "$body"
}

main() {
	check_environment
	local line status
	line=$(profile_line)
	status=$(json_field status "$line")
	if [[ -z $line ]]; then
		create_vm
	elif [[ $status != Running ]]; then
		start_vm "$status"
	else
		echo "colima-create: profile $PROFILE is already running" >&2
	fi
	line=$(wait_for_address)
	authorize_deploy_key
	print_host_key
	printf '%s\n' "$line"
}

main "$@"
