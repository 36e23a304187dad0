#!/usr/bin/env bash
# nodes-ready.sh: wait until at least EXPECTED_COUNT nodes of the cluster are Ready.
#
# Runs ON A SERVER as root (remote.Command: `bash -c '<this text>' nodes-ready.sh COUNT TIMEOUT`).
# Args: EXPECTED_COUNT  nodes that must report Ready; TIMEOUT  seconds to wait.
# Env: POLL_INTERVAL seconds between tries (2).
# A node still tainted node.cloudprovider.kubernetes.io/uninitialized does not count: the cloud
# controller has not taken it over yet (a wrong hcloud token would otherwise go unnoticed).
# Exit codes: 0 enough nodes Ready; 1 not in time (the message names every node that is not
#   Ready with its Ready condition's reason and message, e.g. the CNI not initialised, every
#   node the cloud controller has not initialised, and how many nodes never registered); 2 usage.
set -euo pipefail

readonly PROG=nodes-ready.sh
readonly POLL_INTERVAL=${POLL_INTERVAL:-2}
# One "NAME<TAB>STATUS<TAB>REASON<TAB>TAINT KEYS<TAB>MESSAGE" line per node, from its Ready
# condition and taints; STATUS is True, False or Unknown, and STATUS, REASON and MESSAGE are empty
# before the kubelet first reports. TAINT KEYS are separated by spaces; the message comes last
# because it is free text.
readonly READY_JSONPATH='{range .items[*]}{.metadata.name}{"\t"}{.status.conditions[?(@.type=="Ready")].status}{"\t"}{.status.conditions[?(@.type=="Ready")].reason}{"\t"}{.spec.taints[*].key}{"\t"}{.status.conditions[?(@.type=="Ready")].message}{"\n"}{end}'
readonly UNINITIALIZED_TAINT=node.cloudprovider.kubernetes.io/uninitialized
# shellcheck source-path=SCRIPTDIR source=operator-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/operator-lib.sh" # inline on hosts: poll_until

# Succeeds when at least EXPECTED nodes are Ready; otherwise says which are not (POLL_WHAT,
# POLL_DETAIL). Sets SUMMARY and READY for the success message.
enough_ready() {
  local expected=$1 listing listed=0 registered=0 not_ready="" line name status reason taints message
  READY=0
  SUMMARY=""
  if listing=$(k3s kubectl --request-timeout=5s get nodes -o "jsonpath=$READY_JSONPATH" 2>&1); then
    listed=1
    while IFS= read -r line; do
      # Tabs are whitespace to `read` and runs of them would merge empty fields: split on a
      # separator that is not.
      IFS=$'\x1f' read -r name status reason taints message <<<"${line//$'\t'/$'\x1f'}"
      [[ -n $name ]] || continue
      registered=$((registered + 1))
      if [[ " $taints " == *" $UNINITIALIZED_TAINT "* ]]; then
        SUMMARY+="$name=${status:-Unknown}(uninitialized) "
        not_ready+=$'\n'"  $name: not initialised by the cloud controller (taint $UNINITIALIZED_TAINT)"
        continue
      fi
      SUMMARY+="$name=${status:-Unknown} "
      if [[ $status == True ]]; then
        READY=$((READY + 1))
      else
        not_ready+=$'\n'"  $name: Ready=${status:-Unknown} (${reason:-no reason reported}: ${message:-no message})"
      fi
    done <<<"$listing"
  else
    SUMMARY=${listing//$'\n'/ }
  fi
  ((READY >= expected)) && return 0
  POLL_WHAT="only $READY of $expected nodes Ready on $(uname -n)"
  POLL_DETAIL=": ${SUMMARY% }$not_ready"
  if ((listed && registered < expected)); then
    POLL_DETAIL+=$'\n'"  $((expected - registered)) of $expected expected nodes never registered"
  fi
  return 1
}

main() {
  if (($# != 2)) || ! [[ $1 =~ ^[0-9]+$ && $2 =~ ^[0-9]+$ ]]; then
    printf 'usage: nodes-ready.sh EXPECTED_COUNT TIMEOUT_SECONDS\n' >&2
    exit 2
  fi
  local expected=$((10#$1))
  poll_until "$2" "$POLL_INTERVAL" "fewer than $expected nodes Ready on $(uname -n)" \
    enough_ready "$expected" || return 1
  printf 'nodes-ready.sh: %d of %d nodes Ready: %s\n' "$READY" "$expected" "${SUMMARY% }" >&2
}

main "$@"
