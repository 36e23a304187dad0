#!/usr/bin/env bash
# node-roll.sh: one host's step of a rolling upgrade: drain, push, wait for Ready, uncordon.
#
# Runs on the OPERATOR machine as the update of the host's `<host>-roll` command
# (pulumi_command.local.Command, cwd = project root): bash components/scripts/node-roll.sh
# Env:
#   ROLL_KEY   the k3s package and nixpkgs revision, hashed (required). Printed as the LAST line
#              of stdout when done; pulumi-command hands the previous run's stdout over as
#              PULUMI_COMMAND_STDOUT. When that already ends with ROLL_KEY this is no upgrade:
#              nothing happens here (the host's push applies any other change as usual), unless
#              ROLL_EVERY_RELEASE is 1 or the previous run recorded container nodes (below).
#   ROLL_EVERY_RELEASE 1 on servers and on hosts that carry container nodes (0): a run without
#              an upgrade pushes the new release here, so that these hosts' pushes go one at a
#              time along the roll chain: a change that restarts k3s never takes two etcd members
#              down at once (each push waits for its server's k3s.service, active once its etcd
#              member runs again), and the container nodes the activation stops (`deploy.sh
#              restarts`: the built release's dry activation) are drained first, Ready and
#              uncordoned after, one batch of hosts at a time. A failed step stops the chain as an
#              upgrade's does.
#   CONTAINER_NODES "CONTAINER=NODE ..." for the host's nspawn container nodes: an upgrade drains
#              them with the host's node (their k3s changes too); a new release drains those
#              whose containers it stops or restarts.
#   GATE_HOST, GATE_PORT (22), GATE_USER (root), GATE_HOST_PUBLIC_KEY: the server whose
#              `k3s kubectl` drains and watches the node (node-gate-client.sh)
#   DRAIN_TIMEOUT (300), READY_TIMEOUT (600) seconds
#   and everything deploy.sh reads (TARGET_HOST, HOST_NAME, HOST_JSON, RELEASE_ID, ...): HOST_NAME
#   is also the node's name.
# The record: when CONTAINER_NODES is set, the line before ROLL_KEY on stdout is
#   "container-nodes: CONTAINER=NODE ..." (NixosHost._roll's create writes the same). Read back
#   from the previous run, it names the container nodes the host had: the node of a container the
#   release removes is taken from it (never re-derived from the naming rule), drained before the
#   push stops its container (an upgrade's too) and left cordoned until that container's gate
#   deletes it; and a host whose last container goes (CONTAINER_NODES now empty,
#   ROLL_EVERY_RELEASE possibly 0) still runs the dry activation and pushes here. No such line (a
#   host created without container nodes, or stdout written before the record existed) records
#   none: a removed container whose node is in neither CONTAINER_NODES nor the record stops
#   undrained, with a warning, and its gate drains the node after the fact. A previous stdout of
#   more lines, or a malformed record, is refused (exit 2, nothing done, the roll stops):
#   replacing the `<host>-roll` step (`pulumi up --replace URN`) records the current nodes afresh.
# Stdin: the deploy SSH private key (kept in a 0600 file in a temp dir removed on exit).
# A drain that does not finish in time (a PodDisruptionBudget that never allows the eviction)
#   uncordons the node and fails; a push that fails has rolled the host back (deploy.sh), the node
#   is uncordoned and this fails; a node not Ready in time stays cordoned and this fails. A failure
#   stops the roll: the later nodes' roll steps depend on this one and do not run.
# Exit codes: 0 rolled (or nothing to roll); 1 a step failed; 2 bad environment.
# Portable to the bash 3.2 and BSD tools of macOS.
set -euo pipefail
set -f # no globbing: the CONTAINER=NODE lists are split on blanks

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
readonly PROG=node-roll.sh
# shellcheck source-path=SCRIPTDIR source=operator-lib.sh
source "$SCRIPT_DIR/operator-lib.sh"

say() {
  printf '%s: %s\n' "$PROG" "$*" >&2
}

# node-gate-client.sh against the gate server (its TARGET_* are the gate's, not the node's).
gate() {
  TARGET_HOST=$GATE_HOST TARGET_PORT=${GATE_PORT:-22} TARGET_USER=${GATE_USER:-root} \
    HOST_PUBLIC_KEY=$GATE_HOST_PUBLIC_KEY \
    bash "$SCRIPT_DIR/node-gate-client.sh" "$@" <"$WORK/deploy-key" >&2
}

# NODES: the nodes this roll takes out of service (drained before the push, Ready and uncordoned
# after it). LEAVING: container nodes whose container the release removes (drained before the
# push stops it, left cordoned: the container's own gate deletes the node). DRAINED: those
# drained so far, uncordoned again when a later step fails.
NODES=()
LEAVING=()
DRAINED=()

# The record's first word (see the header); what follows it is CONTAINER_NODES of that run.
readonly RECORD_PREFIX=container-nodes:

# Exit 2 unless every word of PAIRS is CONTAINER=NODE (a DNS-label-like node name). WHAT names
# the input.
check_pairs() {
  local what=$1 pairs=$2 pair
  for pair in $pairs; do
    [[ $pair =~ ^[A-Za-z0-9_-][A-Za-z0-9._-]*=[a-z0-9]([a-z0-9.-]*[a-z0-9])?$ ]] ||
      bad_input "$what must be CONTAINER=NODE pairs: $pair"
  done
}

# The node of CONTAINER in PAIRS ("CONTAINER=NODE ..."), or nothing.
node_of() {
  local name=$1 pairs=$2 pair
  for pair in $pairs; do
    if [[ ${pair%%=*} == "$name" ]]; then
      printf '%s\n' "${pair#*=}"
      return 0
    fi
  done
}

# The last lines of stdout: the record (when there are container nodes), then ROLL_KEY.
print_done() {
  if [[ -n $CONTAINER_NODES ]]; then
    printf '%s %s\n' "$RECORD_PREFIX" "$CONTAINER_NODES"
  fi
  printf '%s\n' "$ROLL_KEY"
}

uncordon_drained() {
  local node
  for node in ${DRAINED[@]+"${DRAINED[@]}"}; do
    gate uncordon "$node" || say "$node: uncordon failed too"
  done
}

# Drain NODES and LEAVING, push, wait until NODES are Ready, uncordon them. WHAT says why.
roll_nodes() {
  local what=$1 node
  ((${#NODES[@]} + ${#LEAVING[@]} > 0)) || say "$HOST_NAME: $what: no node to drain"
  for node in ${NODES[@]+"${NODES[@]}"} ${LEAVING[@]+"${LEAVING[@]}"}; do
    say "$HOST_NAME: $what: drain $node (up to ${DRAIN_TIMEOUT}s)"
    if ! gate drain "$node" "$DRAIN_TIMEOUT"; then
      # node-gate.sh uncordons a node whose drain did not finish; the others drained before it
      # are uncordoned here.
      uncordon_drained
      fail "$HOST_NAME: drain of $node did not finish; the nodes are uncordoned and unchanged; the roll stops here"
    fi
    DRAINED+=("$node")
  done
  say "$HOST_NAME: push"
  if ! bash "$SCRIPT_DIR/deploy.sh" <"$WORK/deploy-key" >&2; then
    uncordon_drained
    fail "$HOST_NAME: push failed (the host rolled back to its previous system); the nodes are uncordoned; the roll stops here"
  fi
  for node in ${NODES[@]+"${NODES[@]}"}; do
    say "$HOST_NAME: wait for $node to be Ready (up to ${READY_TIMEOUT}s), then uncordon"
    gate ready "$node" "$READY_TIMEOUT" ||
      fail "$HOST_NAME: pushed but $node is not Ready; the node stays cordoned; the roll stops here"
  done
}

main() {
  require_env ROLL_KEY HOST_NAME GATE_HOST GATE_HOST_PUBLIC_KEY
  [[ $ROLL_KEY =~ ^[0-9a-f]{8,64}$ ]] || bad_input "ROLL_KEY must be a hex digest: $ROLL_KEY"
  DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-300}
  READY_TIMEOUT=${READY_TIMEOUT:-600}
  require_number DRAIN_TIMEOUT
  require_number READY_TIMEOUT
  ROLL_EVERY_RELEASE=${ROLL_EVERY_RELEASE:-0}
  [[ $ROLL_EVERY_RELEASE == 0 || $ROLL_EVERY_RELEASE == 1 ]] ||
    bad_input "ROLL_EVERY_RELEASE must be 0 or 1: $ROLL_EVERY_RELEASE"
  CONTAINER_NODES=${CONTAINER_NODES:-}
  check_pairs CONTAINER_NODES "$CONTAINER_NODES"
  local pair normal=""
  for pair in $CONTAINER_NODES; do
    normal+=" $pair"
  done
  CONTAINER_NODES=${normal# } # single spaces, as the record writes it
  # The previous run's stdout (pulumi-command trims its final newline): the record, then the key.
  local previous=${PULUMI_COMMAND_STDOUT:-} record=""
  previous=${previous%$'\n'}
  if [[ $previous == *$'\n'* ]]; then
    record=${previous%%$'\n'*}
    previous=${previous#*$'\n'}
    [[ $previous != *$'\n'* && $record =~ ^$RECORD_PREFIX( [^ ]+)+$ ]] ||
      bad_input "the previous run's stdout (PULUMI_COMMAND_STDOUT) is not '$RECORD_PREFIX CONTAINER=NODE ...' then the roll key: ${record:0:200}; nothing was done; replacing this host's -roll step records its container nodes afresh"
    record=${record#"$RECORD_PREFIX" }
    check_pairs "the previous run's $RECORD_PREFIX record" "$record"
  fi
  # The container nodes the host had as of the previous run (see the header).
  PREVIOUS_NODES=$record
  if [[ $previous == "$ROLL_KEY" && $ROLL_EVERY_RELEASE == 0 && -z $PREVIOUS_NODES ]]; then
    say "$HOST_NAME: k3s package and nixpkgs unchanged: no upgrade to roll"
    print_done
    return 0
  fi

  umask 077
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/nixos-k3s-roll.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
  cat >"$WORK/deploy-key"
  [[ -s $WORK/deploy-key ]] || bad_input "no deploy private key on stdin"

  if [[ $previous == "$ROLL_KEY" ]]; then
    # A new release, no upgrade: the host's own node keeps its pods (k3s restarts, they run on),
    # but a container the activation stops takes its node's pods with it: drain those first.
    local name node
    if [[ -n $CONTAINER_NODES || -n $PREVIOUS_NODES ]]; then
      bash "$SCRIPT_DIR/deploy.sh" restarts <"$WORK/deploy-key" >"$WORK/restarts" ||
        fail "$HOST_NAME: build of the new release failed; nothing was activated; the roll stops here"
      while IFS= read -r name; do
        node=$(node_of "$name" "$CONTAINER_NODES")
        if [[ -n $node ]]; then
          NODES+=("$node")
          continue
        fi
        # Not in the new release: the activation stops it for good. Its node, as recorded.
        node=$(node_of "$name" "$PREVIOUS_NODES")
        if [[ -n $node ]]; then
          LEAVING+=("$node")
        else
          say "$HOST_NAME: warning: container $name stops, and neither CONTAINER_NODES nor the previous run's record names its node: not drained (its gate drains the node after it stops)"
        fi
      done <"$WORK/restarts"
    fi
    roll_nodes "a new release, pushed one host at a time (no upgrade)"
    say "$HOST_NAME: pushed"
    print_done
    return 0
  fi

  # An upgrade: the host's node and every container node it carries (their k3s changes too),
  # and the recorded nodes of the containers this release removes (left cordoned; draining a
  # node that never registered does nothing).
  NODES=("$HOST_NAME")
  for pair in $CONTAINER_NODES; do
    NODES+=("${pair#*=}")
  done
  for pair in $PREVIOUS_NODES; do
    [[ -n $(node_of "${pair%%=*}" "$CONTAINER_NODES") ]] || LEAVING+=("${pair#*=}")
  done
  roll_nodes "upgrade ${previous:-(unknown)} -> $ROLL_KEY"
  say "$HOST_NAME: upgraded"
  print_done
}

main "$@"
