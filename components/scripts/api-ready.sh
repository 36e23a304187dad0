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

readonly POLL_INTERVAL=${POLL_INTERVAL:-2}

one_line() {
  local text=$1
  text=${text//$'\n'/ }
  printf '%s' "${text:0:400}"
}

main() {
  if (($# != 1)) || ! [[ $1 =~ ^[0-9]+$ ]]; then
    printf 'usage: api-ready.sh TIMEOUT_SECONDS\n' >&2
    exit 2
  fi
  local timeout=$1 end answer
  end=$((SECONDS + 10#$timeout))
  while :; do
    if answer=$(k3s kubectl --request-timeout=5s get --raw=/readyz 2>&1) && [[ $answer == ok ]]; then
      printf 'api-ready.sh: Kubernetes API on %s is ready\n' "$(uname -n)" >&2
      return 0
    fi
    if ((SECONDS >= end)); then
      printf 'api-ready.sh: Kubernetes API on %s not ready after %ss; last answer: %s\n' \
        "$(uname -n)" "$timeout" "$(one_line "${answer:-<none>}")" >&2
      return 1
    fi
    sleep "$POLL_INTERVAL"
  done
}

main "$@"
