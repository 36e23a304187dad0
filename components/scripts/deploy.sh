#!/usr/bin/env bash
# deploy.sh: push one host's NixOS configuration and activate it with magic rollback.
#
# Runs on the OPERATOR machine (pulumi_command.local.Command, cwd = project root):
#   bash components/scripts/deploy.sh          push and activate (the gated step)
#   bash components/scripts/deploy.sh build    push and build only, nothing activated: every
#                                              host builds as soon as it answers; the later
#                                              activation reuses the build
#   bash components/scripts/deploy.sh restarts push and build, then print on stdout the nspawn
#                                              containers the activation would stop or restart
#                                              (one name a line; node-roll.sh drains their nodes)
# Env:
#   TARGET_HOST (required), TARGET_PORT (22), TARGET_USER (root)
#   HOST_NAME        nixosConfigurations name (required)
#   HOST_PUBLIC_KEY  pinned host key "ssh-ed25519 AAAA..." (required; never trust-on-first-use)
#   HOST_JSON        host data, JSON text (required); becomes hosts/$HOST_NAME.json
#   NIXOS_SOURCE_DIR the static nixos/ tree (nixos)
#   RELEASE_ID       content hash of the release (required)
#   ROLLBACK_TIMEOUT seconds before the host rolls itself back unless confirmed (180)
#   JOIN_TIMEOUT     the same for the push that first starts k3s on the host, a server's etcd
#                    join (ROLLBACK_TIMEOUT; the longer of the two applies)
#   HEALTH_UNITS     space-separated systemd units that must be active ("" = none)
#   HEALTH_TIMEOUT   seconds to wait for HEALTH_UNITS (90; capped by the rollback deadline; the
#                    push that first starts k3s waits until its deadline)
#   SSH_CONNECT_TIMEOUT (10), SSH_CONNECT_ATTEMPTS (30), SSH_RETRY_DELAY (5): dial retries
#     that outlast a reboot or kexec
# Stdin: the deploy SSH private key (OpenSSH PEM). It only ever lives in a 0600 temp file.
# Portable to the bash 3.2 and BSD tools of macOS.
# Exit codes: 0 deployed and confirmed; 1 any failure (the message and the last lines of the
#   on-host log say which); 2 bad environment.
# Flow: receive (atomic upload) -> activate (build unless built, arm rollback timer,
#   switch-to-configuration test of the built system) -> confirm over a FRESH connection (health,
#   disarm, persist: nix-env --set + switch-to-configuration boot; no flake evaluation again).
#   `build`: receive -> build; exit 1 when the build fails (nothing is activated).
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
readonly PROG=deploy.sh
# shellcheck source-path=SCRIPTDIR source=operator-lib.sh
source "$SCRIPT_DIR/operator-lib.sh"
readonly REMOTE_SCRIPT=host-activate.sh

setup() {
  require_env TARGET_HOST HOST_NAME HOST_PUBLIC_KEY HOST_JSON RELEASE_ID
  TARGET_PORT=${TARGET_PORT:-22}
  TARGET_USER=${TARGET_USER:-root}
  NIXOS_SOURCE_DIR=${NIXOS_SOURCE_DIR:-nixos}
  ROLLBACK_TIMEOUT=${ROLLBACK_TIMEOUT:-180}
  JOIN_TIMEOUT=${JOIN_TIMEOUT:-$ROLLBACK_TIMEOUT}
  HEALTH_UNITS=${HEALTH_UNITS:-}
  HEALTH_TIMEOUT=${HEALTH_TIMEOUT:-90}
  SSH_CONNECT_TIMEOUT=${SSH_CONNECT_TIMEOUT:-10}
  SSH_CONNECT_ATTEMPTS=${SSH_CONNECT_ATTEMPTS:-30}
  SSH_RETRY_DELAY=${SSH_RETRY_DELAY:-5}
  local name
  for name in TARGET_PORT ROLLBACK_TIMEOUT JOIN_TIMEOUT HEALTH_TIMEOUT SSH_CONNECT_TIMEOUT SSH_CONNECT_ATTEMPTS; do
    require_number "$name"
  done
  [[ $SSH_RETRY_DELAY =~ ^[0-9]+([.][0-9]+)?$ ]] || bad_input "SSH_RETRY_DELAY must be a number"
  [[ $HOST_NAME =~ ^[A-Za-z0-9_-][A-Za-z0-9._-]*$ ]] || bad_input "invalid HOST_NAME: $HOST_NAME"
  [[ $RELEASE_ID =~ ^[A-Za-z0-9_-][A-Za-z0-9._-]*$ ]] || bad_input "invalid RELEASE_ID: $RELEASE_ID"
  [[ $HOST_PUBLIC_KEY =~ ^ssh-[a-z0-9-]+\ [A-Za-z0-9+/=]+ ]] ||
    bad_input "HOST_PUBLIC_KEY must look like 'ssh-ed25519 AAAA...'"
  [[ -d $NIXOS_SOURCE_DIR ]] || bad_input "NIXOS_SOURCE_DIR $NIXOS_SOURCE_DIR is not a directory"

  umask 077
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/nixos-k3s-deploy.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  trap 'exit 129' HUP

  cat >"$WORK/deploy-key"
  [[ -s $WORK/deploy-key ]] || bad_input "no deploy private key on stdin"
  pinned_ssh_setup
}

on_host() {
  on_host_run "$REMOTE_SCRIPT" "$@"
}

assemble_release() {
  assemble_flake "$WORK/flake"
  COPYFILE_DISABLE=1 tar -C "$WORK/flake" -cf "$WORK/release.tar" .
}

print_host_status() {
  on_host status </dev/null >&2 || true
}

main() {
  local mode=${1:-activate}
  [[ $mode == activate || $mode == build || $mode == restarts ]] ||
    bad_input "unknown mode $mode (build, restarts, or no argument to activate)"
  setup
  assemble_release
  local sha
  sha=$(sha256_stdin <"$WORK/release.tar")

  printf 'deploy.sh: %s: pushing release %s\n' "$HOST_NAME" "$RELEASE_ID" >&2
  wait_for_ssh || fail "cannot reach $TARGET:$TARGET_PORT with the pinned host key"
  on_host receive "$RELEASE_ID" "$sha" <"$WORK/release.tar" ||
    fail "upload of release $RELEASE_ID failed (the host keeps no partial release)"
  if [[ $mode == build ]]; then
    on_host build "$RELEASE_ID" "$HOST_NAME" </dev/null ||
      fail "build of release $RELEASE_ID failed on $HOST_NAME; nothing was activated"
    printf 'deploy.sh: %s: release %s built\n' "$HOST_NAME" "$RELEASE_ID" >&2
    return 0
  fi
  if [[ $mode == restarts ]]; then
    on_host restarts "$RELEASE_ID" "$HOST_NAME" </dev/null ||
      fail "build or dry activation of release $RELEASE_ID failed on $HOST_NAME; nothing was activated"
    return 0
  fi

  local activated_at armed status=0
  activated_at=$(date +%s)
  # activate prints the rollback timeout it armed: JOIN_TIMEOUT when it first starts k3s.
  armed=$(on_host activate "$RELEASE_ID" "$HOST_NAME" "$ROLLBACK_TIMEOUT" "$JOIN_TIMEOUT" </dev/null) ||
    status=$?
  if ! [[ $armed =~ ^[0-9]+$ ]]; then
    # Not known (the connection dropped, or nothing was armed): the longer one, to be safe.
    armed=$((10#$JOIN_TIMEOUT > 10#$ROLLBACK_TIMEOUT ? 10#$JOIN_TIMEOUT : 10#$ROLLBACK_TIMEOUT))
  fi
  case $status in
  0) ;;
  255) printf 'deploy.sh: connection lost during activation; checking over a new connection\n' >&2 ;;
  3) fail "build of release $RELEASE_ID failed on $HOST_NAME; nothing was activated" ;;
  4) fail "activation of release $RELEASE_ID failed on $HOST_NAME; rolled back" ;;
  *)
    # E.g. the on-host rollback stopped an activation that hung: show what the host says.
    print_host_status
    fail "activate step failed on $HOST_NAME (exit $status)"
    ;;
  esac

  # A fresh connection proves the new configuration still lets us in.
  local deadline=$((activated_at + armed))
  if ! wait_for_ssh "$deadline"; then
    local wait_left=$((deadline - $(date +%s) + 5))
    if ((wait_left > 0)); then
      printf 'deploy.sh: waiting %ss for the on-host rollback timer\n' "$wait_left" >&2
      sleep "$wait_left"
    fi
    print_host_status
    fail "no new SSH connection to $HOST_NAME after activating release $RELEASE_ID;" \
      "the host rolls itself back to the previous generation after ${armed}s"
  fi
  local -a units
  read -r -a units <<<"$HEALTH_UNITS"
  status=0
  on_host confirm "$RELEASE_ID" "$HOST_NAME" "$HEALTH_TIMEOUT" ${units[@]+"${units[@]}"} </dev/null || status=$?
  case $status in
  0) printf 'deploy.sh: %s: release %s confirmed\n' "$HOST_NAME" "$RELEASE_ID" >&2 ;;
  4) fail "activation of release $RELEASE_ID did not complete on $HOST_NAME; rolled back" ;;
  5) fail "health check of release $RELEASE_ID failed on $HOST_NAME; rolled back" ;;
  6) fail "release $RELEASE_ID was rolled back on $HOST_NAME before it could be confirmed" ;;
  255)
    print_host_status
    fail "connection lost while confirming release $RELEASE_ID on $HOST_NAME;" \
      "unless confirmed, the host rolls back after ${armed}s"
    ;;
  *) fail "confirm step failed on $HOST_NAME (exit $status)" ;;
  esac
}

main "$@"
