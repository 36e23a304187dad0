#!/usr/bin/env bash
# etcd-restore.sh: restore a cluster's embedded etcd from a snapshot, across all its servers.
#
# Runs on the OPERATOR machine, by hand (docs/operations.md, "etcd snapshots to S3, and restoring one"):
#   components/scripts/etcd-restore.sh SNAPSHOT BOOTSTRAP_SERVER [OTHER_SERVER...]
# SNAPSHOT: a snapshot name in the S3 bucket (`k3s etcd-snapshot ls` on a server lists local
#   and S3 snapshots) or an absolute path of a snapshot file on BOOTSTRAP_SERVER.
# Servers: ssh destinations (user@address or ~/.ssh/config aliases) of every k3s server; the
#   first is the stack's bootstrap server (output bootstrapHost). Agents need nothing: they
#   reconnect once the API is back.
# Steps (etcd-restore-host.sh does each one on its host): stop k3s on the other servers, then
#   on the bootstrap server; reset etcd there from the snapshot and start it; then, one server
#   at a time, delete the old etcd data of each other server and start it, so it rejoins.
#   The first failing step stops the run: the message says which, and what state it left.
# Env: SSH_CONFIG (an ssh_config file, `ssh -F`), REMOTE_SUDO (default `sudo -n`; empty when
#   the destinations log in as root), SSH_CONNECT_TIMEOUT (10).
# Secrets: none pass through here: the S3 keys and the token stay in their 0600 files on the
#   servers. Exit codes: 0 restored; 1 a step failed; 2 usage.
set -euo pipefail

readonly PROG=etcd-restore.sh
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR
readonly REMOTE_SUDO=${REMOTE_SUDO-sudo -n}
readonly SSH_CONNECT_TIMEOUT=${SSH_CONNECT_TIMEOUT:-10}
# shellcheck source-path=SCRIPTDIR source=operator-lib.sh
source "$SCRIPT_DIR/operator-lib.sh"

step() {
  local host=$1 command
  shift
  command=$(remote_command etcd-restore-host.sh "$@")
  printf '%s: %s: %s\n' "$PROG" "$host" "$*" >&2
  local -a ssh_opts=(-T -o BatchMode=yes -o ConnectTimeout="$SSH_CONNECT_TIMEOUT")
  if [[ -n ${SSH_CONFIG:-} ]]; then
    ssh_opts=(-F "$SSH_CONFIG" "${ssh_opts[@]}")
  fi
  # shellcheck disable=SC2029 # expanding here is the point: remote_command quotes every word.
  ssh "${ssh_opts[@]}" "$host" "${REMOTE_SUDO:+$REMOTE_SUDO }$command" </dev/null
}

main() {
  if (($# < 2)); then
    bad_input "usage: $PROG SNAPSHOT BOOTSTRAP_SERVER [OTHER_SERVER...]"
  fi
  local snapshot=$1 bootstrap=$2 host
  shift 2
  local -a others=("$@")
  if [[ $snapshot != /* && ! $snapshot =~ ^[A-Za-z0-9._-]+$ ]]; then
    bad_input "SNAPSHOT must be an S3 snapshot name or an absolute path: $snapshot"
  fi

  for host in "${others[@]}" "$bootstrap"; do
    step "$host" stop ||
      fail "could not stop k3s on $host; k3s may be stopped on the servers before it: start it again there (systemctl start k3s) or rerun"
  done
  step "$bootstrap" reset "$snapshot" ||
    fail "reset on $bootstrap failed; k3s is stopped on every server, their etcd data untouched except $bootstrap's: fix the cause and rerun"
  for host in "${others[@]}"; do
    step "$host" rejoin ||
      fail "$host did not rejoin; the restored cluster runs on $bootstrap (and the servers before $host): rerun '$PROG' is NOT needed, fix $host and run its rejoin step again"
  done
  printf '%s: etcd restored from %s on %s; %d other server(s) rejoined\n' \
    "$PROG" "$snapshot" "$bootstrap" "${#others[@]}" >&2
}

main "$@"
