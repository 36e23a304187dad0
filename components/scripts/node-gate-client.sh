#!/usr/bin/env bash
# node-gate-client.sh: run node-gate.sh on the bootstrap server, from the OPERATOR machine.
#
# Runs on the OPERATOR machine (pulumi_command.local.Command, cwd = project root):
#   bash components/scripts/node-gate-client.sh wait NODE TIMEOUT [label:K=V|taint:K[=V]:E ...]
#   bash components/scripts/node-gate-client.sh remove NODE
#   bash components/scripts/node-gate-client.sh drain|ready NODE TIMEOUT | uncordon NODE
#     (rolling upgrades, node-roll.sh)
# Env:
#   TARGET_HOST (required), TARGET_PORT (22), TARGET_USER (root): the bootstrap server
#   HOST_PUBLIC_KEY  its pinned SSH host key (required)
#   NODE_GATE_BOOTSTRAP  1 when NODE is the bootstrap server itself (see node-gate.sh)
#   SSH_CONNECT_TIMEOUT (10), SSH_CONNECT_ATTEMPTS (30 for wait, 3 for remove), SSH_RETRY_DELAY (5)
# Stdin: the deploy SSH private key (kept in a 0600 file in a temp dir removed on exit).
# `remove` succeeds when the server cannot be reached at all: the cluster went with it (deleted
#   by hand, or destroyed first), so there is nothing to drain, and `pulumi destroy` must not fail
#   on it. It says so. A server that answers with another host key (or refuses our key) is not
#   "gone": that fails. Any other failure of node-gate.sh is passed on.
# Exit codes: those of node-gate.sh (0 ok, 1 failed, 2 usage); 1 when `wait` cannot connect;
#   2 bad environment.
# Portable to the bash 3.2 and BSD tools of macOS.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
readonly PROG=node-gate-client.sh
# shellcheck source-path=SCRIPTDIR source=operator-lib.sh
source "$SCRIPT_DIR/operator-lib.sh"

setup() {
  local verb=$1
  require_env TARGET_HOST HOST_PUBLIC_KEY
  TARGET_PORT=${TARGET_PORT:-22}
  TARGET_USER=${TARGET_USER:-root}
  SSH_CONNECT_TIMEOUT=${SSH_CONNECT_TIMEOUT:-10}
  if [[ $verb == remove ]]; then
    SSH_CONNECT_ATTEMPTS=${SSH_CONNECT_ATTEMPTS:-3}
  else
    SSH_CONNECT_ATTEMPTS=${SSH_CONNECT_ATTEMPTS:-30}
  fi
  SSH_RETRY_DELAY=${SSH_RETRY_DELAY:-5}
  NODE_GATE_BOOTSTRAP=${NODE_GATE_BOOTSTRAP:-0}
  local name
  for name in TARGET_PORT SSH_CONNECT_TIMEOUT SSH_CONNECT_ATTEMPTS; do
    require_number "$name"
  done
  [[ $SSH_RETRY_DELAY =~ ^[0-9]+([.][0-9]+)?$ ]] || bad_input "SSH_RETRY_DELAY must be a number"
  [[ $NODE_GATE_BOOTSTRAP == 0 || $NODE_GATE_BOOTSTRAP == 1 ]] ||
    bad_input "NODE_GATE_BOOTSTRAP must be 0 or 1"
  [[ $HOST_PUBLIC_KEY =~ ^ssh-[a-z0-9-]+\ [A-Za-z0-9+/=]+ ]] ||
    bad_input "HOST_PUBLIC_KEY must look like 'ssh-ed25519 AAAA...'"

  umask 077
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/nixos-k3s-gate.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
  cat >"$WORK/deploy-key"
  [[ -s $WORK/deploy-key ]] || bad_input "no deploy private key on stdin"
  pinned_ssh_setup
}

main() {
  local verb=${1:-}
  case $verb in
  wait) (($# >= 3)) || bad_input "usage: $PROG wait NODE TIMEOUT [MARKING...]" ;;
  remove | uncordon) (($# == 2)) || bad_input "usage: $PROG $verb NODE" ;;
  drain | ready) (($# == 3)) || bad_input "usage: $PROG $verb NODE TIMEOUT" ;;
  *) bad_input "usage: $PROG wait NODE TIMEOUT | $PROG remove|uncordon NODE | $PROG drain|ready NODE TIMEOUT" ;;
  esac
  setup "$verb"
  if ! wait_for_ssh "" </dev/null; then
    local probe
    probe=$(ssh "${SSH_OPTS[@]}" "$TARGET" true </dev/null 2>&1) || true
    if [[ $probe == *"Host key verification failed"* || $probe == *"Permission denied"* ]]; then
      # Something answers, but not our server (or not to our key): never skip the drain.
      fail "$TARGET_HOST:$TARGET_PORT answers but is not the pinned bootstrap server: $probe"
    fi
    if [[ $verb == remove ]]; then
      printf '%s: %s:%s is unreachable: the cluster is gone, nothing to drain for %s\n' \
        "$PROG" "$TARGET_HOST" "$TARGET_PORT" "$2" >&2
      return 0
    fi
    fail "cannot reach the bootstrap server $TARGET_HOST:$TARGET_PORT to wait for node $2"
  fi
  ENV_PREFIX="env NODE_GATE_BOOTSTRAP=$NODE_GATE_BOOTSTRAP "
  on_host_run node-gate.sh "$@" </dev/null
}

main "$@"
