#!/usr/bin/env bash
# api-ready.sh: wait until the Kubernetes API of this k3s server answers /readyz with "ok".
#
# Runs ON THE FIRST SERVER as root (remote.Command: `bash -c '<this text>' api-ready.sh TIMEOUT`).
# Args: TIMEOUT  seconds to wait.
# Env: POLL_INTERVAL seconds between tries (2).
# Asks through `k3s kubectl get --raw=/readyz` (k3s's admin kubeconfig, its own CA).
# Exit codes: 0 ready; 1 not ready in time (the message names the host and the last answer);
#   2 usage.
set -euo pipefail

readonly PROG=api-ready.sh
readonly POLL_INTERVAL=${POLL_INTERVAL:-2}
# shellcheck source-path=SCRIPTDIR source=operator-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/operator-lib.sh" # inline on hosts: one_line poll_until

api_ready() {
  local answer
  if answer=$(k3s kubectl --request-timeout=5s get --raw=/readyz 2>&1) && [[ $answer == ok ]]; then
    return 0
  fi
  POLL_DETAIL="; last answer: $(one_line "${answer:-<none>}")"
  return 1
}

main() {
  if (($# != 1)) || ! [[ $1 =~ ^[0-9]+$ ]]; then
    printf 'usage: api-ready.sh TIMEOUT_SECONDS\n' >&2
    exit 2
  fi
  poll_until "$1" "$POLL_INTERVAL" "Kubernetes API on $(uname -n) not ready" api_ready ||
    return 1
  printf 'api-ready.sh: Kubernetes API on %s is ready\n' "$(uname -n)" >&2
}

main "$@"
