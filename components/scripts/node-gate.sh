#!/usr/bin/env bash
# node-gate.sh: wait for a node to register, or drain and delete it.
#
# Runs ON A SERVER as root (remote.Command: `bash -c '<this text>' node-gate.sh ...`):
#   node-gate.sh wait NODE TIMEOUT [label:KEY=VALUE|taint:KEY[=VALUE]:EFFECT ...]
#                                    until node NODE is registered in the API, then applies
#                                    the labels and taints (k3s sets --node-label/--node-taint
#                                    only when a node registers; this keeps them current when
#                                    the stack changes them; ones removed from the stack stay)
#   node-gate.sh remove NODE         drain (daemonsets ignored, emptyDir data deleted, bounded)
#                                    and delete the Node object. For a server node, k3s's etcd
#                                    member controller (pkg/etcd/member_controller.go, OnRemove of
#                                    nodes labelled etcd) then removes its etcd member. Run it on
#                                    ANOTHER server than the one being removed.
#   node-gate.sh drain NODE TIMEOUT  rolling upgrade: cordon and drain through the eviction API
#                                    (PodDisruptionBudgets respected, daemonsets ignored,
#                                    emptyDir data deleted) for at most TIMEOUT seconds; when it
#                                    does not finish, uncordon again and fail. A node that is not
#                                    registered has nothing to drain.
#   node-gate.sh ready NODE TIMEOUT  until node NODE reports Ready, then uncordon it; fails
#                                    (node left cordoned) when it is not Ready in time
#   node-gate.sh uncordon NODE       mark the node schedulable again
# Env: POLL_INTERVAL (2), DRAIN_TIMEOUT (120), DELETE_TIMEOUT (60) seconds;
#   NODE_GATE_API_TIMEOUT (30): seconds `remove` polls the API before it decides the API does not
#   answer. NODE_GATE_BOOTSTRAP=1 marks NODE as the server that initialised etcd: `remove`
#   refuses it while any other server is registered
#   (another server must take over k3s.bootstrapHost first); as the last server it goes.
#   NODE_GATE_TEARDOWN=1: the whole stack is being destroyed (node-gate-client.sh's teardown
#   marker), so an API that does not answer means the cluster is gone.
# `remove` succeeds when the node is not registered, or when the API does not answer while the
#   stack is being destroyed (a destroyed cluster must not block `pulumi destroy`); it says which.
#   An API that does not answer otherwise (a scale-down: k3s restarting, etcd without quorum)
#   fails the removal: the node would leave without a drain and stay an etcd member. A drain that
#   fails is reported and the node is deleted anyway: the machine is going away.
# Exit codes: 0 ok; 1 timeout or a failed delete; 2 usage.
set -euo pipefail

readonly PROG=node-gate.sh
readonly POLL_INTERVAL=${POLL_INTERVAL:-2}
readonly DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-120}
readonly DELETE_TIMEOUT=${DELETE_TIMEOUT:-60}
readonly NODE_GATE_API_TIMEOUT=${NODE_GATE_API_TIMEOUT:-30}
# shellcheck source-path=SCRIPTDIR source=operator-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/operator-lib.sh" # inline on hosts: one_line poll_until bad_input require_number

say() {
  printf '%s: %s\n' "$PROG" "$*" >&2
}

usage() {
  printf 'usage: node-gate.sh wait NODE TIMEOUT [label:K=V|taint:K[=V]:EFFECT ...] | node-gate.sh remove NODE | node-gate.sh drain|ready NODE TIMEOUT | node-gate.sh uncordon NODE\n' >&2
  exit 2
}

kubectl() {
  k3s kubectl --request-timeout=10s "$@"
}

node_registered() {
  local answer
  answer=$(kubectl get node "$1" -o name 2>&1) && return 0
  POLL_DETAIL="; last answer: $(one_line "$answer")"
  return 1
}

cmd_wait() {
  local node=$1 timeout=$2
  shift 2
  poll_until "$timeout" "$POLL_INTERVAL" "node $node not registered on $(uname -n)" \
    node_registered "$node" || return 1
  say "node $node is registered"
  apply_labels_and_taints "$node" "$@"
}

api_answers() {
  local answer
  answer=$(kubectl get --raw=/readyz 2>&1) && return 0
  POLL_DETAIL="; last answer: $(one_line "$answer")"
  return 1
}

cmd_remove() {
  local node=$1 answer
  if ! poll_until "$NODE_GATE_API_TIMEOUT" "$POLL_INTERVAL" \
    "Kubernetes API on $(uname -n) does not answer" api_answers; then
    if [[ ${NODE_GATE_TEARDOWN:-0} == 1 ]]; then
      say "the stack is being destroyed, so the cluster is gone; nothing to remove for $node"
      return 0
    fi
    say "refusing to drop $node without draining it and removing it from etcd (the stack is" \
      "not being destroyed)"
    return 1
  fi
  if ! answer=$(kubectl get node "$node" -o name 2>&1); then
    if [[ $answer == *NotFound* ]]; then
      say "node $node is not registered; nothing to remove"
      return 0
    fi
    say "cannot look up node $node: $(one_line "$answer")"
    return 1
  fi
  if [[ ${NODE_GATE_BOOTSTRAP:-0} == 1 ]]; then
    refuse_if_other_servers "$node" || return 1
  fi
  say "draining $node (up to ${DRAIN_TIMEOUT}s)"
  kubectl drain "$node" --ignore-daemonsets --delete-emptydir-data --force \
    --timeout="${DRAIN_TIMEOUT}s" >&2 || say "warning: drain of $node did not finish; deleting it anyway"
  if ! kubectl delete node "$node" --ignore-not-found --wait=true --timeout="${DELETE_TIMEOUT}s" >&2; then
    say "deleting node $node failed"
    return 1
  fi
  say "node $node deleted"
}

cmd_drain() {
  local node=$1 timeout=$2 answer
  if ! answer=$(kubectl get node "$node" -o name 2>&1); then
    if [[ $answer == *NotFound* ]]; then
      say "node $node is not registered; nothing to drain"
      return 0
    fi
    say "cannot look up node $node: $(one_line "$answer")"
    return 1
  fi
  say "draining $node (up to ${timeout}s, PodDisruptionBudgets respected)"
  if ! kubectl drain "$node" --ignore-daemonsets --delete-emptydir-data \
    --timeout="${timeout}s" >&2; then
    say "drain of $node did not finish in ${timeout}s; uncordoning it again"
    kubectl uncordon "$node" >&2 || say "uncordon of $node failed"
    return 1
  fi
  say "node $node drained"
}

node_ready() {
  local status
  if ! status=$(kubectl get node "$1" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>&1); then
    POLL_DETAIL=" (status: unknown; $(one_line "$status")); left cordoned"
    return 1
  fi
  [[ $status == True ]] && return 0
  POLL_DETAIL=" (status: ${status:-unknown}); left cordoned"
  return 1
}

cmd_ready() {
  local node=$1 timeout=$2
  poll_until "$timeout" "$POLL_INTERVAL" "node $node not Ready" node_ready "$node" || return 1
  say "node $node is Ready"
  cmd_uncordon "$node"
}

cmd_uncordon() {
  local node=$1
  kubectl uncordon "$node" >&2 || {
    say "uncordon of $node failed"
    return 1
  }
  say "node $node uncordoned"
}

refuse_if_other_servers() {
  local node=$1 servers others=()
  if ! servers=$(kubectl get nodes -l node-role.kubernetes.io/control-plane -o name 2>&1); then
    say "cannot list the servers: $(one_line "$servers")"
    return 1
  fi
  local name
  for name in $servers; do
    [[ ${name#node/} == "$node" ]] || others+=("${name#node/}")
  done
  if ((${#others[@]} > 0)); then
    say "refusing to remove $node: it is the bootstrap server (it initialised etcd) and" \
      "servers ${others[*]} remain. Set k3s.bootstrapHost to one of them, run pulumi up," \
      "then remove $node."
    return 1
  fi
}

apply_labels_and_taints() {
  local node=$1 item
  shift
  local -a labels=() taints=()
  for item in "$@"; do
    case $item in
    label:*) labels+=("${item#label:}") ;;
    taint:*) taints+=("${item#taint:}") ;;
    esac
  done
  if ((${#labels[@]} > 0)); then
    kubectl label node "$node" --overwrite "${labels[@]}" >&2 || {
      say "labelling node $node failed"
      return 1
    }
  fi
  if ((${#taints[@]} > 0)); then
    kubectl taint node "$node" --overwrite "${taints[@]}" >&2 || {
      say "tainting node $node failed"
      return 1
    }
  fi
}

valid_marking() {
  [[ $1 =~ ^label:[A-Za-z0-9./_-]+=[A-Za-z0-9._-]*$ ||
    $1 =~ ^taint:[A-Za-z0-9./_-]+(=[A-Za-z0-9._-]*)?:(NoSchedule|PreferNoSchedule|NoExecute)$ ]]
}

valid_node() {
  [[ $1 =~ ^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$ ]]
}

main() {
  local verb=${1:-}
  case $verb in
  wait)
    if (($# < 3)) || ! valid_node "$2" || ! [[ $3 =~ ^[0-9]+$ ]]; then
      usage
    fi
    local marking
    for marking in "${@:4}"; do
      valid_marking "$marking" || usage
    done
    cmd_wait "${@:2}"
    ;;
  remove)
    if (($# != 2)) || ! valid_node "$2"; then
      usage
    fi
    require_number NODE_GATE_API_TIMEOUT
    cmd_remove "$2"
    ;;
  drain | ready)
    if (($# != 3)) || ! valid_node "$2" || ! [[ $3 =~ ^[0-9]+$ ]]; then
      usage
    fi
    "cmd_$verb" "$2" "$3"
    ;;
  uncordon)
    if (($# != 2)) || ! valid_node "$2"; then
      usage
    fi
    cmd_uncordon "$2"
    ;;
  *) usage ;;
  esac
}

main "$@"
