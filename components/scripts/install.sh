#!/usr/bin/env bash
# install.sh: install NixOS on a fresh machine once, with nixos-anywhere (kexec + disko).
#
# Runs on the OPERATOR machine (pulumi_command.local.Command, cwd = project root):
#   bash components/scripts/install.sh
# Env:
#   TARGET_HOST (required), TARGET_PORT (22), TARGET_USER (root; a sudo user on Colima)
#   HOST_NAME        nixosConfigurations name (required)
#   HOST_JSON        host data, JSON text (required); becomes hosts/$HOST_NAME.json
#   NIXOS_SOURCE_DIR the static nixos/ tree (nixos)
#   HOST_PUBLIC_KEY  public half of the pre-generated host key (required); every connection
#                    after the install pins it
#   POST_INSTALL_USER  user that logs in once NixOS runs (root)
#   POST_KEXEC_SSH_PORT  port of the kexec installer's sshd as seen from here (TARGET_PORT;
#                    differs from 22 only behind a port forward)
#   NIXOS_ANYWHERE   a nixos-anywhere executable to use instead of the pinned release, which
#                    runs through `nix run github:nix-community/nixos-anywhere/$NIXOS_ANYWHERE_REF`
#   NIXOS_ANYWHERE_REF  release tag of nixos-anywhere (1.13.0)
#   SSH_CONNECT_TIMEOUT (10), SSH_CONNECT_ATTEMPTS (60), SSH_RETRY_DELAY (5)
#   FROM_IMAGE       1: the machine booted the NixOS image (hetzner.nixosImage), whose first
#                    boot installs the pinned host key from the server's user data; only wait
#                    until it answers with that key, never run nixos-anywhere (0)
# Stdin: records `<path>\t<octal mode>\t<base64 content>`, one a line. `@deploy-key` is the SSH
#   private key to connect with, `@host-key` the host's private ed25519 host key (installed as
#   /etc/ssh/ssh_host_ed25519_key, 0600, with its .pub); any other path is a file put on the
#   target through --extra-files (install-secrets.sh stages it with its mode).
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
  require_env TARGET_HOST HOST_NAME HOST_JSON HOST_PUBLIC_KEY
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
  FROM_IMAGE=${FROM_IMAGE:-0}
  [[ $FROM_IMAGE == 0 || $FROM_IMAGE == 1 ]] || bad_input "FROM_IMAGE must be 0 or 1: $FROM_IMAGE"
  local name
  for name in TARGET_PORT POST_KEXEC_SSH_PORT SSH_CONNECT_TIMEOUT SSH_CONNECT_ATTEMPTS; do
    require_number "$name"
  done
  [[ $SSH_RETRY_DELAY =~ ^[0-9]+([.][0-9]+)?$ ]] || bad_input "SSH_RETRY_DELAY must be a number"
  [[ $HOST_NAME =~ ^[A-Za-z0-9_-][A-Za-z0-9._-]*$ ]] || bad_input "invalid HOST_NAME: $HOST_NAME"
  [[ $HOST_PUBLIC_KEY =~ ^ssh-ed25519\ [A-Za-z0-9+/=]+ ]] ||
    bad_input "HOST_PUBLIC_KEY must look like 'ssh-ed25519 AAAA...'"
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

# Splits stdin into the two keys and the records of files for the target.
read_bundle() {
  local tab line path content
  tab=$(printf '\t')
  : >"$WORK/records"
  while IFS= read -r line || [[ -n $line ]]; do
    [[ -n $line ]] || continue
    IFS=$tab read -r path _ content _ <<<"$line"
    case $path in
    @deploy-key) printf '%s' "${content:-}" | base64 --decode >"$WORK/deploy-key" ;;
    @host-key) printf '%s' "${content:-}" | base64 --decode >"$WORK/host-key" ;;
    @*) bad_input "unknown special record $path" ;;
    *) printf '%s\n' "$line" >>"$WORK/records" ;;
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
}

# The tree nixos-anywhere copies onto the new root. Its directories are 0755 because tar
# applies them to /etc, /var and friends on the target; the files carry their own modes.
stage_extra_files() {
  local extra=$WORK/extra
  mkdir -m 0755 "$extra"
  INSTALL_ROOT=$extra NEW_DIR_MODE=0755 bash "$SCRIPT_DIR/install-secrets.sh" <"$WORK/records" >&2
  (umask 022 && mkdir -p "$extra/etc/ssh")
  cp "$WORK/host-key" "$extra/etc/ssh/ssh_host_ed25519_key"
  chmod 0600 "$extra/etc/ssh/ssh_host_ed25519_key"
  printf '%s\n' "$HOST_PUBLIC_KEY" >"$extra/etc/ssh/ssh_host_ed25519_key.pub"
  chmod 0644 "$extra/etc/ssh/ssh_host_ed25519_key.pub"
}

# Prints installed, other-key (the machine answers with another host key: not ours yet) or
# unreachable.
probe_installed() {
  if ssh -F none -T -p "$TARGET_PORT" -i "$WORK/deploy-key" -o IdentitiesOnly=yes \
    -o IdentityAgent=none -o BatchMode=yes -o StrictHostKeyChecking=yes \
    -o UserKnownHostsFile="$WORK/known_hosts" -o GlobalKnownHostsFile=/dev/null \
    -o HostKeyAlias=nixos-k3s-target -o UpdateHostKeys=no -o ControlMaster=no \
    -o ControlPath=none -o ConnectTimeout="$SSH_CONNECT_TIMEOUT" -o LogLevel=ERROR \
    "$POST_INSTALL_USER@$TARGET_HOST" true </dev/null 2>"$WORK/probe.err"; then
    echo installed
  elif grep -q 'Host key verification failed' "$WORK/probe.err"; then
    echo other-key
  else
    echo unreachable
  fi
}

# Waits until the machine answers SSH (with `installed`: with the pinned key), then prints
# what it found.
wait_for_answer() {
  local want=${1:-any} attempt state
  for ((attempt = 1; attempt <= SSH_CONNECT_ATTEMPTS; attempt++)); do
    state=$(probe_installed)
    if [[ $state == installed || ($state == other-key && $want == any) ]]; then
      printf '%s\n' "$state"
      return 0
    fi
    printf 'install.sh: %s:%s not answering yet (attempt %d/%d): %s\n' "$TARGET_HOST" \
      "$TARGET_PORT" "$attempt" "$SSH_CONNECT_ATTEMPTS" "$(tr '\n' ' ' <"$WORK/probe.err")" >&2
    sleep "$SSH_RETRY_DELAY"
  done
  printf '%s\n' "$state"
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

run_nixos_anywhere() {
  nixos_anywhere \
    --flake "path:$WORK/flake#$HOST_NAME" \
    --target-host "$TARGET_USER@$TARGET_HOST" \
    --ssh-port "$TARGET_PORT" \
    --post-kexec-ssh-port "$POST_KEXEC_SSH_PORT" \
    -i "$WORK/deploy-key" \
    --build-on remote \
    --extra-files "$WORK/extra" </dev/null >&2
}

main() {
  setup
  read_bundle
  local state
  if [[ $FROM_IMAGE == 1 ]]; then
    state=$(wait_for_answer installed)
    [[ $state == installed ]] ||
      fail "$HOST_NAME booted from the NixOS image does not answer with the pinned host key ($state)"
    printf 'install.sh: %s runs the NixOS image; it answers with the pinned host key\n' "$HOST_NAME" >&2
    return 0
  fi
  state=$(wait_for_answer)
  case $state in
  installed)
    printf 'install.sh: %s already runs the installed system (pinned host key); skipping\n' \
      "$HOST_NAME" >&2
    return 0
    ;;
  unreachable) fail "cannot reach $TARGET_HOST:$TARGET_PORT over SSH" ;;
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
