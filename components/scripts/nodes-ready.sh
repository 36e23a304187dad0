#!/usr/bin/env bash
# nodes-ready.sh: wait until at least EXPECTED_COUNT nodes of the cluster are Ready.
# A node an external cloud controller has not initialised yet (taint
# node.cloudprovider.kubernetes.io/uninitialized: no providerID, zone labels or addresses from
# hcloud-cloud-controller-manager) does not count, so a broken cloud controller fails the deploy.
#
# Runs ON A SERVER as root (remote.Command: `bash -c '<this text>' nodes-ready.sh COUNT TIMEOUT`).
# Args: EXPECTED_COUNT  nodes that must report Ready; TIMEOUT  seconds to wait.
# Env: POLL_INTERVAL seconds between tries (2).
# Exit codes: 0 enough nodes Ready; 1 not in time (the message lists every node's Ready status);
#   2 usage.
set -euo pipefail

readonly POLL_INTERVAL=${POLL_INTERVAL:-2}
# One "NAME<TAB>STATUS<TAB>TAINT KEYS" line per node; STATUS is the Ready condition (True, False,
# Unknown), TAINT KEYS the node's taint keys separated by spaces.
readonly READY_JSONPATH='{range .items[*]}{.metadata.name}{"\t"}{.status.conditions[?(@.type=="Ready")].status}{"\t"}{.spec.taints[*].key}{"\n"}{end}'
readonly UNINITIALIZED_TAINT=node.cloudprovider.kubernetes.io/uninitialized

main() {
  if (($# != 2)) || ! [[ $1 =~ ^[0-9]+$ && $2 =~ ^[0-9]+$ ]]; then
    printf 'usage: nodes-ready.sh EXPECTED_COUNT TIMEOUT_SECONDS\n' >&2
    exit 2
  fi
  local expected=$((10#$1)) timeout=$2 end listing ready summary
  end=$((SECONDS + 10#$timeout))
  while :; do
    ready=0
    summary=""
    if listing=$(k3s kubectl --request-timeout=5s get nodes -o "jsonpath=$READY_JSONPATH" 2>&1); then
      local name status taints
      while IFS=$'\t' read -r name status taints; do
        [[ -n $name ]] || continue
        if [[ " $taints " == *" $UNINITIALIZED_TAINT "* ]]; then
          summary+="$name=${status:-Unknown}(uninitialized) "
          continue
        fi
        summary+="$name=${status:-Unknown} "
        [[ $status != True ]] || ready=$((ready + 1))
      done <<<"$listing"
    else
      summary=${listing//$'\n'/ }
    fi
    if ((ready >= expected)); then
      printf 'nodes-ready.sh: %d of %d nodes Ready: %s\n' "$ready" "$expected" "${summary% }" >&2
      return 0
    fi
    if ((SECONDS >= end)); then
      printf 'nodes-ready.sh: only %d of %d nodes Ready on %s after %ss: %s\n' "$ready" \
        "$expected" "$(uname -n)" "$timeout" "${summary% }" >&2
      return 1
    fi
    sleep "$POLL_INTERVAL"
  done
}

main "$@"
