#!/usr/bin/env bash
# node-roll.sh: one node's step of a rolling upgrade: drain, push, wait for Ready, uncordon.
#
# Runs on the OPERATOR machine as the update of the host's `<host>-roll` command
# (pulumi_command.local.Command, cwd = project root): bash components/scripts/node-roll.sh
# Env:
#   ROLL_KEY   the k3s package and nixpkgs revision, hashed (required). Printed on stdout when
#              done; pulumi-command hands the previous run's stdout over as PULUMI_COMMAND_STDOUT.
#              When that already ends with ROLL_KEY this is no upgrade: nothing happens here (the
#              host's push applies any other change as usual), unless ROLL_EVERY_RELEASE is 1.
#   ROLL_EVERY_RELEASE 1 on servers (0): a run without an upgrade pushes the new release here,
#              with no drain, so that the servers' pushes go one at a time along the roll chain
#              (each waits for the previous server's k3s.service, active once its etcd member
#              runs again) and a change that restarts k3s never takes two etcd members down at
#              once; a failed push stops the chain as an upgrade's does.
#   GATE_HOST, GATE_PORT (22), GATE_USER (root), GATE_HOST_PUBLIC_KEY: the server whose
#              `k3s kubectl` drains and watches the node (node-gate-client.sh)
#   DRAIN_TIMEOUT (300), READY_TIMEOUT (600) seconds
#   and everything deploy.sh reads (TARGET_HOST, HOST_NAME, HOST_JSON, RELEASE_ID, ...): HOST_NAME
#   is also the node's name.
# Stdin: the deploy SSH private key (kept in a 0600 file in a temp dir removed on exit).
# A drain that does not finish in time (a PodDisruptionBudget that never allows the eviction)
#   uncordons the node and fails; a push that fails has rolled the host back (deploy.sh), the node
#   is uncordoned and this fails; a node not Ready in time stays cordoned and this fails. A failure
#   stops the roll: the later nodes' roll steps depend on this one and do not run.
# Exit codes: 0 rolled (or nothing to roll); 1 a step failed; 2 bad environment.
# Portable to the bash 3.2 and BSD tools of macOS.
set -euo pipefail

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
  local previous=${PULUMI_COMMAND_STDOUT:-}
  previous=${previous%$'\n'}
  previous=${previous##*$'\n'}
  if [[ $previous == "$ROLL_KEY" && $ROLL_EVERY_RELEASE == 0 ]]; then
    say "$HOST_NAME: k3s package and nixpkgs unchanged: no upgrade to roll"
    printf '%s\n' "$ROLL_KEY"
    return 0
  fi

  umask 077
  WORK=$(mktemp -d "${TMPDIR:-/tmp}/nixos-k3s-roll.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
  cat >"$WORK/deploy-key"
  [[ -s $WORK/deploy-key ]] || bad_input "no deploy private key on stdin"

  if [[ $previous == "$ROLL_KEY" ]]; then
    say "$HOST_NAME: no upgrade; a server's release is pushed one server at a time: push"
    bash "$SCRIPT_DIR/deploy.sh" <"$WORK/deploy-key" >&2 ||
      fail "$HOST_NAME: push failed (the host rolled back to its previous system); the later servers and agents wait; the roll stops here"
    say "$HOST_NAME: pushed"
    printf '%s\n' "$ROLL_KEY"
    return 0
  fi

  say "$HOST_NAME: upgrade ${previous:-(unknown)} -> $ROLL_KEY: drain (up to ${DRAIN_TIMEOUT}s)"
  gate drain "$HOST_NAME" "$DRAIN_TIMEOUT" ||
    fail "$HOST_NAME: drain did not finish; the node is uncordoned and unchanged; the roll stops here"
  say "$HOST_NAME: push"
  if ! bash "$SCRIPT_DIR/deploy.sh" <"$WORK/deploy-key" >&2; then
    gate uncordon "$HOST_NAME" || say "$HOST_NAME: uncordon failed too"
    fail "$HOST_NAME: push failed (the host rolled back to its previous system); the node is uncordoned; the roll stops here"
  fi
  say "$HOST_NAME: wait for Ready (up to ${READY_TIMEOUT}s), then uncordon"
  gate ready "$HOST_NAME" "$READY_TIMEOUT" ||
    fail "$HOST_NAME: upgraded but not Ready; the node stays cordoned; the roll stops here"
  say "$HOST_NAME: upgraded"
  printf '%s\n' "$ROLL_KEY"
}

main "$@"
