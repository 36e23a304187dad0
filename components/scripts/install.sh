#!/usr/bin/env bash
# install.sh: install NixOS on a fresh machine once, with nixos-anywhere (kexec + disko).
#
# Runs on the OPERATOR machine (pulumi_command.local.Command, cwd = project root):
#   bash components/scripts/install.sh
# Env:
#   TARGET_HOST (required), TARGET_PORT (22), TARGET_USER (root; a sudo user on Colima)
#   HOST_NAME        nixosConfigurations name (required)
#   HOST_JSON        host data, JSON text (required unless FROM_IMAGE=1); becomes
#                    hosts/$HOST_NAME.json. The image path builds nothing here, so it does not
#                    wait for the facts the document carries (the private network's MAC)
#   NIXOS_SOURCE_DIR the static nixos/ tree (nixos)
#   HOST_PUBLIC_KEY  public half of the pre-generated host key (required); every connection
#                    after the install pins it
#   STOCK_HOST_PUBLIC_KEY  the host key the machine answers with before NixOS (required unless
#                    FROM_IMAGE=1): the
#                    stock image's (Hetzner: installed by cloud-init user data; Colima: read
#                    through `colima ssh`), which the kexec installer keeps (nixos-images copies
#                    /etc/ssh/ssh_host_*). The first contact and all of nixos-anywhere's
#                    connections pin it: nothing is trusted on first use.
#   POST_INSTALL_USER  user that logs in once NixOS runs (root)
#   POST_KEXEC_SSH_PORT  port of the kexec installer's sshd as seen from here (TARGET_PORT;
#                    differs from 22 only behind a port forward)
#   NIXOS_ANYWHERE   a nixos-anywhere executable to use instead of the pinned release, which
#                    runs through `nix run github:nix-community/nixos-anywhere/$NIXOS_ANYWHERE_REF`
#   NIXOS_ANYWHERE_REF  release tag of nixos-anywhere (1.13.0)
#   SSH_CONNECT_TIMEOUT (10), SSH_CONNECT_ATTEMPTS (60), SSH_RETRY_DELAY (5)
#   FROM_IMAGE       1: the machine booted the NixOS image (hetzner.nixosImage): its first boot
#                    installs the throwaway stock key from the server's user data
#                    (hetzner-host-key.nix); over a connection pinned to it, the host's NixOS key
#                    replaces it and sshd restarts, so the key the metadata service hands out is
#                    retired at once. Never runs nixos-anywhere (0)
# Stdin: an install-secrets.sh bundle (header with record count and sha256, then records
#   `<path>\t<octal mode>\t<base64 content>`), checked before anything is used. It holds exactly
#   what the install needs: `@deploy-key`, the SSH private key to connect with, and `@host-key`,
#   the host's private ed25519 host key (installed as /etc/ssh/ssh_host_ed25519_key, 0600, with
#   its .pub). Secret files (k3s token, tailscale key) are refused here: they travel later, over
#   the pinned connection of the secrets step (install-secrets.sh on the host).
# Pinning nixos-anywhere: it runs ssh with `-o UserKnownHostsFile=/dev/null -o
#   StrictHostKeyChecking=no` FIRST (src/nixos-anywhere.sh sshArgs, 1.13.0), and ssh keeps the
#   first value of each option, so `--ssh-option` cannot turn checking back on. Its wrapper puts
#   the operator's ssh on PATH (`--suffix PATH : openssh`, "We prefer the system's openssh"), so
#   an `ssh` first on PATH that puts the pinning options in front reaches every connection it
#   makes: ssh, ssh-copy-id, and nix's ssh:// and ssh-ng:// stores.
# Secrets only ever live in a mktemp dir (umask 077) removed on every exit path; no secret is on
#   a command line. A host that already answers with the pinned host key is left alone, so a
#   re-run never wipes an installed machine.
# Exit codes: 0 installed (or already installed); 1 install failed or host unreachable;
#   2 bad environment or bundle.
# Portable to the bash 3.2 and BSD tools of macOS.
# shellcheck disable=SC2153 # TARGET_HOST comes from the environment, checked by require_env.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
readonly PROG=install.sh
# shellcheck source-path=SCRIPTDIR source=operator-lib.sh
source "$SCRIPT_DIR/operator-lib.sh"
# The release whose flags this script passes (src/nixos-anywhere.sh of that tag).
readonly DEFAULT_NIXOS_ANYWHERE_REF=1.13.0

setup() {
  require_env TARGET_HOST HOST_NAME HOST_PUBLIC_KEY STOCK_HOST_PUBLIC_KEY
  FROM_IMAGE=${FROM_IMAGE:-0}
  [[ $FROM_IMAGE == 0 || $FROM_IMAGE == 1 ]] || bad_input "FROM_IMAGE must be 0 or 1: $FROM_IMAGE"
  [[ $FROM_IMAGE == 1 ]] || require_env HOST_JSON
  TARGET_PORT=${TARGET_PORT:-22}
  TARGET_USER=${TARGET_USER:-root}
  NIXOS_SOURCE_DIR=${NIXOS_SOURCE_DIR:-nixos}
  POST_INSTALL_USER=${POST_INSTALL_USER:-root}
  POST_KEXEC_SSH_PORT=${POST_KEXEC_SSH_PORT:-$TARGET_PORT}
  NIXOS_ANYWHERE=${NIXOS_ANYWHERE:-}
  NIXOS_ANYWHERE_REF=${NIXOS_ANYWHERE_REF:-$DEFAULT_NIXOS_ANYWHERE_REF}
  SSH_CONNECT_TIMEOUT=${SSH_CONNECT_TIMEOUT:-10}
  SSH_CONNECT_ATTEMPTS=${SSH_CONNECT_ATTEMPTS:-60}
  SSH_RETRY_DELAY=${SSH_RETRY_DELAY:-5}
  local name
  for name in TARGET_PORT POST_KEXEC_SSH_PORT SSH_CONNECT_TIMEOUT SSH_CONNECT_ATTEMPTS; do
    require_number "$name"
  done
  [[ $SSH_RETRY_DELAY =~ ^[0-9]+([.][0-9]+)?$ ]] || bad_input "SSH_RETRY_DELAY must be a number"
  [[ $HOST_NAME =~ ^[A-Za-z0-9_-][A-Za-z0-9._-]*$ ]] || bad_input "invalid HOST_NAME: $HOST_NAME"
  [[ $HOST_PUBLIC_KEY =~ ^ssh-ed25519\ [A-Za-z0-9+/=]+ ]] ||
    bad_input "HOST_PUBLIC_KEY must look like 'ssh-ed25519 AAAA...'"
  [[ $STOCK_HOST_PUBLIC_KEY =~ ^ssh-ed25519\ [A-Za-z0-9+/=]+ ]] ||
    bad_input "STOCK_HOST_PUBLIC_KEY must look like 'ssh-ed25519 AAAA...'"
  [[ $NIXOS_ANYWHERE_REF =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] ||
    bad_input "NIXOS_ANYWHERE_REF must be a tag or commit: $NIXOS_ANYWHERE_REF"
  [[ -d $NIXOS_SOURCE_DIR ]] || bad_input "NIXOS_SOURCE_DIR $NIXOS_SOURCE_DIR is not a directory"

  umask 077
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/nixos-k3s-install.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP
}

# Checks the bundle on stdin (install-secrets.sh --verify: count and sha256) and splits it into
# the two keys.
read_bundle() {
  local tab body line path content
  tab=$(printf '\t')
  body=$(bash "$SCRIPT_DIR/install-secrets.sh" --verify) || bad_input "the install bundle on stdin is not valid"
  while [[ -n $body ]]; do
    line=${body%%$'\n'*}
    if [[ $body == *$'\n'* ]]; then body=${body#*$'\n'}; else body=""; fi
    path=${line%%"$tab"*}
    content=${line##*"$tab"}
    case $path in
    @deploy-key) printf '%s' "$content" | base64 --decode >"$WORK/deploy-key" ;;
    @host-key) printf '%s' "$content" | base64 --decode >"$WORK/host-key" ;;
    @*) bad_input "unknown special record $path" ;;
    *) bad_input "the install carries only @deploy-key and @host-key; $path belongs to the secrets step" ;;
    esac
  done
  [[ -s $WORK/deploy-key ]] || bad_input "the bundle has no @deploy-key record"
  [[ -s $WORK/host-key ]] || bad_input "the bundle has no @host-key record"
  chmod 0600 "$WORK/deploy-key" "$WORK/host-key"
  local derived pinned derived_type derived_body pinned_type pinned_body
  derived=$(ssh-keygen -y -f "$WORK/host-key" 2>/dev/null) || bad_input "@host-key is not a private key"
  read -r derived_type derived_body _ <<<"$derived"
  read -r pinned_type pinned_body _ <<<"$HOST_PUBLIC_KEY"
  [[ $derived_type == "$pinned_type" && $derived_body == "$pinned_body" ]] ||
    bad_input "@host-key does not match HOST_PUBLIC_KEY"
  pinned="$pinned_type $pinned_body"
  printf 'nixos-k3s-target %s\n' "$pinned" >"$WORK/known_hosts"
  local stock_type stock_body
  read -r stock_type stock_body _ <<<"$STOCK_HOST_PUBLIC_KEY"
  printf 'nixos-k3s-stock %s %s\n' "$stock_type" "$stock_body" >"$WORK/known_hosts_stock"
}

# The tree nixos-anywhere copies onto the new root: the host key only. Its directories are 0755
# because tar applies them to /etc on the target.
stage_extra_files() {
  local extra=$WORK/extra
  mkdir -m 0755 "$extra"
  (umask 022 && mkdir -p "$extra/etc/ssh")
  cp "$WORK/host-key" "$extra/etc/ssh/ssh_host_ed25519_key"
  chmod 0600 "$extra/etc/ssh/ssh_host_ed25519_key"
  printf '%s\n' "$HOST_PUBLIC_KEY" >"$extra/etc/ssh/ssh_host_ed25519_key.pub"
  chmod 0644 "$extra/etc/ssh/ssh_host_ed25519_key.pub"
}

# One login as USER, accepting only the key in KNOWN_HOSTS (under ALIAS); errors in probe.err.
# ssh to the target as USER, pinned to the one key in KNOWN_HOSTS (under ALIAS), running COMMAND.
pinned_ssh() {
  local known_hosts=$1 alias=$2 user=$3
  shift 3
  ssh -F none -T -p "$TARGET_PORT" -i "$WORK/deploy-key" -o IdentitiesOnly=yes \
    -o IdentityAgent=none -o BatchMode=yes -o StrictHostKeyChecking=yes \
    -o UserKnownHostsFile="$known_hosts" -o GlobalKnownHostsFile=/dev/null \
    -o HostKeyAlias="$alias" -o UpdateHostKeys=no -o ControlMaster=no \
    -o ControlPath=none -o ConnectTimeout="$SSH_CONNECT_TIMEOUT" -o LogLevel=ERROR \
    "$user@$TARGET_HOST" "$@"
}

probe_with() {
  pinned_ssh "$1" "$2" "$3" true </dev/null 2>"$WORK/probe.err"
}

# Prints installed (answers with the NixOS host key), stock (with the pinned stock key: not
# installed yet), unknown-key (with neither: never trusted) or unreachable.
probe_installed() {
  if probe_with "$WORK/known_hosts" nixos-k3s-target "$POST_INSTALL_USER"; then
    echo installed
  elif ! grep -q 'Host key verification failed' "$WORK/probe.err"; then
    echo unreachable
  elif probe_with "$WORK/known_hosts_stock" nixos-k3s-stock "$TARGET_USER"; then
    echo stock
  elif grep -q 'Host key verification failed' "$WORK/probe.err"; then
    echo unknown-key
  else
    echo unreachable
  fi
}

# Waits until the machine answers SSH (with `installed`: with the pinned key), then prints
# what it found last; poll_ssh keeps the attempts and the time. Always succeeds: the caller
# judges the state.
wait_for_answer() {
  ANSWER_WANT=${1:-any} ANSWER_STATE=""
  poll_ssh "" "$TARGET_HOST:$TARGET_PORT not answering" answer_probe || :
  printf '%s\n' "$ANSWER_STATE"
}

# One try of wait_for_answer: true when the state is the one wanted (ANSWER_STATE).
answer_probe() {
  ANSWER_STATE=$(probe_installed)
  [[ $ANSWER_STATE == installed || ($ANSWER_STATE == stock && $ANSWER_WANT == any) ]] && return 0
  POLL_DETAIL=": $(tr '\n' ' ' <"$WORK/probe.err")"
  return 1
}

# nixos-anywhere itself: the given executable, or the pinned release through `nix run` (the
# operator needs only Nix with flakes, no installed nixos-anywhere).
nixos_anywhere() {
  if [[ -n $NIXOS_ANYWHERE ]]; then
    "$NIXOS_ANYWHERE" "$@"
  else
    nix --extra-experimental-features "nix-command flakes" \
      run "github:nix-community/nixos-anywhere/$NIXOS_ANYWHERE_REF" -- "$@"
  fi
}

# An `ssh` for nixos-anywhere that pins the stock host key in front of its own options.
pinned_ssh_for_nixos_anywhere() {
  local real_ssh
  real_ssh=$(command -v ssh) || fail "no ssh on PATH"
  mkdir -m 0700 "$WORK/pinned-bin"
  {
    printf '#!/usr/bin/env bash\n'
    printf '# ssh keeps the first value of each option: these come before nixos-anywhere'"'"'s.\n'
    printf 'exec %s -o StrictHostKeyChecking=yes -o UserKnownHostsFile=%s' \
      "$(shquote "$real_ssh")" "$(shquote "$WORK/known_hosts_stock")"
    printf ' -o GlobalKnownHostsFile=/dev/null -o HostKeyAlias=nixos-k3s-stock'
    printf ' -o UpdateHostKeys=no -o CheckHostIP=no "$@"\n'
  } >"$WORK/pinned-bin/ssh"
  chmod 0700 "$WORK/pinned-bin/ssh"
}

run_nixos_anywhere() {
  pinned_ssh_for_nixos_anywhere
  PATH="$WORK/pinned-bin:$PATH" nixos_anywhere \
    --flake "path:$WORK/flake#$HOST_NAME" \
    --target-host "$TARGET_USER@$TARGET_HOST" \
    --ssh-port "$TARGET_PORT" \
    --post-kexec-ssh-port "$POST_KEXEC_SSH_PORT" \
    -i "$WORK/deploy-key" \
    --build-on remote \
    --extra-files "$WORK/extra" </dev/null >&2
}

# The NixOS image: puts the host's own key in place of the first-boot key and restarts sshd,
# over a connection pinned to the first-boot key; the key travels on stdin.
# shellcheck disable=SC2016 # expanded on the host
readonly ROTATE_HOST_KEY='set -eu
umask 077
d=${NIXOS_K3S_ROOT:-}/etc/ssh
cat >"$d/ssh_host_ed25519_key.new"
ssh-keygen -y -f "$d/ssh_host_ed25519_key.new" >"$d/ssh_host_ed25519_key.pub.new"
chmod 0644 "$d/ssh_host_ed25519_key.pub.new"
mv "$d/ssh_host_ed25519_key.pub.new" "$d/ssh_host_ed25519_key.pub"
mv "$d/ssh_host_ed25519_key.new" "$d/ssh_host_ed25519_key"
systemctl restart sshd.service'

rotate_host_key() {
  pinned_ssh "$WORK/known_hosts_stock" nixos-k3s-stock "$TARGET_USER" "$ROTATE_HOST_KEY" \
    <"$WORK/host-key" >&2
}

main() {
  setup
  read_bundle
  local state
  state=$(wait_for_answer)
  if [[ $FROM_IMAGE == 1 && $state == stock ]]; then
    printf 'install.sh: %s runs the NixOS image; replacing its first-boot host key\n' "$HOST_NAME" >&2
    rotate_host_key || fail "cannot install $HOST_NAME's host key over the pinned connection"
    state=$(wait_for_answer installed)
    [[ $state == installed ]] ||
      fail "$HOST_NAME does not answer with the pinned host key after the key change ($state)"
    printf 'install.sh: %s answers with its pinned host key\n' "$HOST_NAME" >&2
    return 0
  fi
  case $state in
  installed)
    printf 'install.sh: %s already runs the installed system (pinned host key); skipping\n' \
      "$HOST_NAME" >&2
    return 0
    ;;
  unreachable) fail "cannot reach $TARGET_HOST:$TARGET_PORT over SSH" ;;
  unknown-key)
    fail "$TARGET_HOST:$TARGET_PORT answers with a host key that is neither the pinned stock key" \
      "nor $HOST_NAME's NixOS key; refusing to install (nothing is trusted on first use)"
    ;;
  *) ;;
  esac
  stage_extra_files
  assemble_flake "$WORK/flake"
  printf 'install.sh: installing NixOS on %s (%s) with nixos-anywhere\n' "$HOST_NAME" "$TARGET_HOST" >&2
  run_nixos_anywhere || fail "nixos-anywhere failed for $HOST_NAME"
  state=$(wait_for_answer installed)
  [[ $state == installed ]] ||
    fail "$HOST_NAME does not answer with the pinned host key after the install ($state)"
  printf 'install.sh: %s installed; it answers with the pinned host key\n' "$HOST_NAME" >&2
}

main "$@"
