#!/usr/bin/env bash
# kubeconfig.sh: print this server's admin kubeconfig, pointed at the cluster's API endpoint.
#
# Runs ON A SERVER as root (remote.Command: `bash -c '<this text>' kubeconfig.sh ENDPOINT NAME`).
# Args: API_ENDPOINT  host, host:port or a URL; without a scheme https://HOST:6443 is built
#                     (an IPv6 address must be bracketed: [2001:db8::1]:6443)
#       CLUSTER_NAME  replaces k3s's "default" as cluster, context and user name
# Env: K3S_KUBECONFIG (default /etc/rancher/k3s/k3s.yaml).
# Stdout: the rewritten kubeconfig (it holds the admin client key: the caller keeps it secret).
# Exit codes: 0 ok; 1 kubeconfig missing or not in k3s's layout; 2 usage.
# Uses only bash, sed and grep.
set -euo pipefail

readonly SOURCE=${K3S_KUBECONFIG:-/etc/rancher/k3s/k3s.yaml}

usage() {
  printf 'usage: kubeconfig.sh API_ENDPOINT CLUSTER_NAME\n' >&2
  exit 2
}

die() {
  local code=$1
  shift
  printf 'kubeconfig.sh: %s\n' "$*" >&2
  exit "$code"
}

server_url() {
  local endpoint=$1
  if [[ $endpoint == *://* ]]; then
    printf '%s' "${endpoint%/}"
  elif [[ $endpoint =~ (^\[[0-9A-Fa-f:.]+\]|^[A-Za-z0-9.-]+):[0-9]+$ ]]; then
    printf 'https://%s' "$endpoint"
  else
    printf 'https://%s:6443' "$endpoint"
  fi
}

main() {
  (($# == 2)) || usage
  local endpoint=$1 name=$2 url
  [[ $endpoint =~ ^([a-z]+://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]+)?/?$ ]] ||
    die 2 "invalid API endpoint: $endpoint"
  [[ $name =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die 2 "invalid cluster name: $name"
  [[ -r $SOURCE ]] ||
    die 1 "$SOURCE not found on $(uname -n): is k3s running as a server here?"
  if ! grep -q '^ *server: ' "$SOURCE" || ! grep -q '^current-context: default$' "$SOURCE"; then
    die 1 "$SOURCE does not look like the kubeconfig k3s writes"
  fi
  url=$(server_url "$endpoint")
  sed -e "s|^\( *\)server: .*\$|\1server: $url|" \
    -e "s|^\( *\)\(- \)\{0,1\}name: default\$|\1\2name: $name|" \
    -e "s|^\( *\)cluster: default\$|\1cluster: $name|" \
    -e "s|^\( *\)user: default\$|\1user: $name|" \
    -e "s|^current-context: default\$|current-context: $name|" \
    "$SOURCE"
}

main "$@"
