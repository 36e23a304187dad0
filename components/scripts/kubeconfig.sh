#!/usr/bin/env bash
# kubeconfig.sh: print this server's admin kubeconfig, pointed at the cluster's API endpoint.
#
# Runs ON A SERVER as root (remote.Command: `bash -c '<this text>' kubeconfig.sh ENDPOINT NAME`).
# Args: API_ENDPOINT  [https://]HOST[:PORT], the grammar of apiEndpoint (components/rules.py
#                     parse_api_endpoint): HOST a DNS name, an IPv4 address or a bracketed
#                     IPv6 address ([2001:db8::1]); PORT 1-65535, default 6443; nothing after it.
#                     The kubeconfig gets https://HOST:PORT.
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

readonly API_PORT=6443

ipv4_ok() {
  local part
  [[ $1 =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || return 1
  for part in ${1//./ }; do
    [[ $part =~ ^(0|[1-9][0-9]{0,2})$ ]] && ((part <= 255)) || return 1
  done
}

# Colon-separated groups of 1-4 hex digits, at most one "::", an optional dotted IPv4 tail.
ipv6_ok() {
  local address=$1 head tail groups=0 group
  [[ $address =~ ^[0-9A-Fa-f:.]+$ && $address != *:::* ]] || return 1
  if [[ $address == *.* ]]; then
    ipv4_ok "${address##*:}" && [[ $address == *:* ]] || return 1
    address="${address%:*}:0:0"
  fi
  if [[ $address == *::* ]]; then
    head=${address%%::*} tail=${address#*::}
    [[ $tail != *::* ]] || return 1
  else
    head=$address tail=
  fi
  for group in ${head//:/ } ${tail//:/ }; do
    [[ $group =~ ^[0-9A-Fa-f]{1,4}$ ]] || return 1
    groups=$((groups + 1))
  done
  # No empty group other than the one "::" stands for.
  [[ $head != :* && $head != *: && $tail != :* && $tail != *: && $head != *::* ]] || return 1
  if [[ $address == *::* ]]; then ((groups <= 7)); else ((groups == 8)); fi
}

dns_name_ok() {
  local name=$1 label last=
  [[ $name =~ ^[A-Za-z0-9.-]{1,253}$ ]] || return 1
  [[ $name != .* && $name != *. && $name != *..* ]] || return 1
  for label in ${name//./ }; do
    ((${#label} <= 63)) && [[ $label =~ ^[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?$ ]] || return 1
    last=$label
  done
  [[ ! $last =~ ^[0-9]+$ ]]
}

# Prints https://HOST:PORT for an endpoint of the grammar above; fails for anything else.
server_url() {
  local rest=${1#https://} host has_port port
  if [[ $rest =~ ^\[([^]]*)\](:(.*))?$ ]]; then
    host=${BASH_REMATCH[1]} has_port=${BASH_REMATCH[2]} port=${BASH_REMATCH[3]}
    ipv6_ok "$host" || return 1
    host="[${host,,}]"
  elif [[ $rest == *:*:* ]]; then
    return 1 # an IPv6 address without brackets, or worse
  elif [[ $rest =~ ^([^:]*)(:(.*))?$ ]]; then
    host=${BASH_REMATCH[1],,} has_port=${BASH_REMATCH[2]} port=${BASH_REMATCH[3]}
    if [[ $host =~ ^[0-9.]+$ ]]; then ipv4_ok "$host" || return 1; else dns_name_ok "$host" || return 1; fi
  else
    return 1
  fi
  if [[ -n $has_port ]]; then
    [[ $port =~ ^[1-9][0-9]{0,4}$ ]] && ((port <= 65535)) || return 1
  else
    port=$API_PORT
  fi
  printf 'https://%s:%s' "$host" "$port"
}

main() {
  (($# == 2)) || usage
  local endpoint=$1 name=$2 url
  url=$(server_url "$endpoint") ||
    die 2 "invalid API endpoint: $endpoint (write [https://]HOST[:PORT], an IPv6 HOST in brackets)"
  [[ $name =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die 2 "invalid cluster name: $name"
  [[ -r $SOURCE ]] ||
    die 1 "$SOURCE not found on $(uname -n): is k3s running as a server here?"
  if ! grep -q '^ *server: ' "$SOURCE" || ! grep -q '^current-context: default$' "$SOURCE"; then
    die 1 "$SOURCE does not look like the kubeconfig k3s writes"
  fi
  sed -e "s|^\( *\)server: .*\$|\1server: $url|" \
    -e "s|^\( *\)\(- \)\{0,1\}name: default\$|\1\2name: $name|" \
    -e "s|^\( *\)cluster: default\$|\1cluster: $name|" \
    -e "s|^\( *\)user: default\$|\1user: $name|" \
    -e "s|^current-context: default\$|current-context: $name|" \
    "$SOURCE"
}

main "$@"
