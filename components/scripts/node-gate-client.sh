#!/usr/bin/env bash
# node-gate-client.sh: run node-gate.sh on the bootstrap server, from the OPERATOR machine.
#
# Runs on the OPERATOR machine (pulumi_command.local.Command, cwd = project root):
#   bash components/scripts/node-gate-client.sh wait NODE TIMEOUT [label:K=V|taint:K[=V]:E ...]
#   bash components/scripts/node-gate-client.sh remove NODE
#   bash components/scripts/node-gate-client.sh in-service   the teardown marker's create
#   bash components/scripts/node-gate-client.sh teardown     its delete: the stack is destroyed
#   bash components/scripts/node-gate-client.sh drain|ready NODE TIMEOUT | uncordon NODE
#     (rolling upgrades, node-roll.sh)
# Env:
#   TARGET_HOST (required), TARGET_PORT (22), TARGET_USER (root): the bootstrap server
#   HOST_PUBLIC_KEY  its pinned SSH host key (required; it also names the cluster's marker)
#   NODE_GATE_BOOTSTRAP  1 when NODE is the bootstrap server itself (see node-gate.sh)
#   NODE_GATE_API_TIMEOUT  passed on to node-gate.sh when set (its default otherwise)
#   SSH_CONNECT_TIMEOUT (10), SSH_CONNECT_ATTEMPTS (30 for wait, 3 for remove), SSH_RETRY_DELAY (5)
#   NIXOS_K3S_STATE_HOME  where the teardown marker lives ($XDG_STATE_HOME/nixos-k3s, or
#                    ~/.local/state/nixos-k3s)
# Stdin: the deploy SSH private key for wait/remove (kept in a 0600 file in a temp dir removed on
#   exit); nothing for in-service/teardown.
# "The cluster is gone" only when the whole stack is being destroyed: the teardown marker (a
#   local.Command that depends on every gate, so `pulumi destroy` deletes it first) writes
#   teardown-<id> on this machine, `pulumi up` (its create) removes it; a marker older than 6 hours
#   counts for nothing. With the marker, `remove` succeeds when the bootstrap server is unreachable
#   or its API is gone: every machine goes in this run, there is nothing to drain. Without it (a
#   scale-down, some servers stay) an unreachable server or API fails the removal, so Pulumi keeps
#   the machine instead of dropping a server that is still an etcd member. A server that answers
#   with another host key (or refuses our key) fails either way. Other failures of node-gate.sh
#   are passed on.
# Exit codes: those of node-gate.sh (0 ok, 1 failed, 2 usage); 1 when the server cannot be
#   reached (remove: unless the stack is being destroyed); 2 bad environment.
# Portable to the bash 3.2 and BSD tools of macOS.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
readonly PROG=node-gate-client.sh
readonly TEARDOWN_MAX_AGE_MINUTES=360
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
  [[ -z ${NODE_GATE_API_TIMEOUT:-} ]] || require_number NODE_GATE_API_TIMEOUT
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

# The cluster's teardown marker (named after the bootstrap server's pinned key, not secret).
teardown_marker() {
  local dir key_type key_body id
  dir=${NIXOS_K3S_STATE_HOME:-${XDG_STATE_HOME:-${HOME:?HOME is not set}/.local/state}/nixos-k3s}
  read -r key_type key_body _ <<<"$HOST_PUBLIC_KEY"
  id=$(printf '%s %s' "$key_type" "$key_body" | sha256_stdin)
  printf '%s/teardown-%s' "$dir" "${id:0:32}"
}

stack_is_being_destroyed() {
  local marker
  marker=$(teardown_marker)
  [[ -f $marker && -n $(find "$marker" -mmin "-$TEARDOWN_MAX_AGE_MINUTES" 2>/dev/null) ]]
}

mark() {
  local verb=$1 marker
  require_env HOST_PUBLIC_KEY
  [[ $HOST_PUBLIC_KEY =~ ^ssh-[a-z0-9-]+\ [A-Za-z0-9+/=]+ ]] ||
    bad_input "HOST_PUBLIC_KEY must look like 'ssh-ed25519 AAAA...'"
  marker=$(teardown_marker)
  if [[ $verb == teardown ]]; then
    (umask 077 && mkdir -p "$(dirname "$marker")")
    printf 'the stack of %s is being destroyed\n' "$TARGET_HOST" >"$marker"
    printf '%s: the stack is being destroyed: node removals may skip unreachable servers\n' "$PROG" >&2
  else
    rm -f "$marker"
  fi
}

main() {
  local verb=${1:-}
  case $verb in
  wait) (($# >= 3)) || bad_input "usage: $PROG wait NODE TIMEOUT [MARKING...]" ;;
  remove | uncordon) (($# == 2)) || bad_input "usage: $PROG $verb NODE" ;;
  drain | ready) (($# == 3)) || bad_input "usage: $PROG $verb NODE TIMEOUT" ;;
  in-service | teardown)
    (($# == 1)) || bad_input "usage: $PROG $verb"
    mark "$verb"
    return 0
    ;;
  *) bad_input "usage: $PROG wait NODE TIMEOUT | $PROG remove|uncordon NODE | $PROG drain|ready NODE TIMEOUT | $PROG in-service | $PROG teardown" ;;
  esac
  setup "$verb"
  local teardown=0
  if [[ $verb == remove ]] && stack_is_being_destroyed; then
    teardown=1
  fi
  if ! wait_for_ssh "" </dev/null; then
    local probe
    probe=$(ssh "${SSH_OPTS[@]}" "$TARGET" true </dev/null 2>&1) || true
    if [[ $probe == *"Host key verification failed"* || $probe == *"Permission denied"* ]]; then
      # Something answers, but not our server (or not to our key): never skip the drain.
      fail "$TARGET_HOST:$TARGET_PORT answers but is not the pinned bootstrap server: $probe"
    fi
    if [[ $verb == remove ]]; then
      if ((teardown)); then
        printf '%s: %s:%s is unreachable and the stack is being destroyed: nothing to drain for %s\n' \
          "$PROG" "$TARGET_HOST" "$TARGET_PORT" "$2" >&2
        return 0
      fi
      fail "the bootstrap server $TARGET_HOST:$TARGET_PORT is unreachable, and the stack is not" \
        "being destroyed: node $2 was not drained nor removed from etcd, so its machine stays." \
        "Check the network and firewall.sshSources, then run pulumi up again. If every server" \
        "really is gone, drop this gate from the state (pulumi state delete, resource $2-joined)."
    fi
    fail "cannot reach the bootstrap server $TARGET_HOST:$TARGET_PORT to wait for node $2"
  fi
  ENV_PREFIX="env NODE_GATE_BOOTSTRAP=$NODE_GATE_BOOTSTRAP NODE_GATE_TEARDOWN=$teardown "
  ENV_PREFIX+=${NODE_GATE_API_TIMEOUT:+"NODE_GATE_API_TIMEOUT=$NODE_GATE_API_TIMEOUT "}
  on_host_run node-gate.sh "$@" </dev/null
}

main "$@"
