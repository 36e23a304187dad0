#!/usr/bin/env bash
# host-activate.sh: receive, activate, confirm or roll back one NixOS release on this host.
#
# Runs ON THE HOST as root, sent inline by deploy.sh (`bash -c '<this text>' host-activate.sh ...`),
# with the operator-lib.sh functions it names in place (see inline_script).
# Usage:
#   host-activate.sh receive  RELEASE_ID SHA256        stdin: tar of the flake dir
#   host-activate.sh build    RELEASE_ID HOST_NAME     build only (activate reuses the result)
#   host-activate.sh restarts RELEASE_ID HOST_NAME     build, then print the nspawn containers
#                                                      its activation would stop or restart
#   host-activate.sh activate RELEASE_ID HOST_NAME ROLLBACK_TIMEOUT [JOIN_TIMEOUT]
#   host-activate.sh confirm  RELEASE_ID HOST_NAME HEALTH_TIMEOUT [UNIT...]
#   host-activate.sh rollback [RELEASE_ID]             (what the on-host timer runs)
#   host-activate.sh status
# Env (tests only): NIXOS_K3S_STATE_DIR (default /var/lib/nixos-k3s), NIXOS_K3S_CURRENT_SYSTEM
#   (default /run/current-system), NIXOS_K3S_SYSTEM_PROFILE (default /nix/var/nix/profiles/system).
# Stdin: only `receive` reads it. No secret passes through this script.
# Deadlines: the built system's `switch-to-configuration test` runs in a session of its own under
#   a deadline of two thirds of ROLLBACK_TIMEOUT (k3s servers are Type=notify with
#   TimeoutStartSec=0, so a config that cuts a server off from etcd would block it for ever); past
#   it, the activation's process group (and any switch-to-configuration unit a manual
#   nixos-rebuild-ng left) is stopped and the previous generation comes back. The rollback timer never waits on an activation either: it stops the
#   activation that holds the lock (TERM, then KILL after STOP_GRACE seconds) and rolls back.
#   The activation that first starts k3s on a held host (below) gets JOIN_TIMEOUT instead when
#   that is longer, for all of these: a server's k3s.service is active only once it has joined
#   etcd, and servers joining together wait for each other (one learner at a time); its confirm
#   waits for the units until that deadline. `activate` prints the rollback timeout it armed.
# Exit codes: 0 ok; 1 error; 2 usage; 3 build failed (nothing activated); 4 activation failed
#   (rolled back); 5 health check failed (rolled back when pending); 6 nothing pending to confirm
#   (the rollback timer already fired, or activate never ran).
# Layout: $STATE/releases/<id>/{flake/,result}, $STATE/pending (armed, unconfirmed activation),
#   $STATE/lock and $STATE/lock.owner (the step holding the lock: command, pid, activation pgid),
#   $STATE/activated (id of the pending release once `switch-to-configuration test` succeeded),
#   $STATE/current-release, $STATE/deploy.log, $STATE/host-activate.sh (copy the timer runs).
# k3s hold: the install puts the final system on the disk with k3s.service held back
#   (ConditionPathExists=$STATE/k3s-released, nixos/modules/k3s.nix) until the first activation
#   releases it in the order the deploy's gates set. $STATE/k3s-release-pending names the
#   release whose activation released it; a rollback of that activation holds k3s again.
set -euo pipefail

readonly PROG=host-activate.sh
# shellcheck source-path=SCRIPTDIR source=operator-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/operator-lib.sh" # inline on hosts: poll_until
readonly STATE=${NIXOS_K3S_STATE_DIR:-/var/lib/nixos-k3s}
readonly CURRENT_SYSTEM=${NIXOS_K3S_CURRENT_SYSTEM:-/run/current-system}
readonly SYSTEM_PROFILE=${NIXOS_K3S_SYSTEM_PROFILE:-/nix/var/nix/profiles/system}
readonly RELEASES=$STATE/releases
readonly PENDING=$STATE/pending
readonly ACTIVATED=$STATE/activated
readonly LOG=$STATE/deploy.log
readonly ROLLBACK_UNIT=nixos-k3s-rollback
readonly HELD_UNIT=k3s.service
readonly RELEASED=$STATE/k3s-released
readonly RELEASE_PENDING=$STATE/k3s-release-pending
readonly KEEP_RELEASES=3
readonly CONFIRM_MARGIN=5
readonly LOG_MAX_BYTES=1048576
readonly STOP_GRACE=5
readonly ROLLBACK_SWITCH_LIMIT=300
# nixos-rebuild-ng runs switch-to-configuration as a transient unit (systemd-run
# --unit=nixos-rebuild-switch-to-configuration, a suffixed name in later releases) so that it
# survives its client: stopping nixos-rebuild alone would leave the activation running.
readonly SWITCH_UNITS='nixos-rebuild-switch-to-configuration*.service'
readonly -a TEST_ENV_VARS=(NIXOS_K3S_STATE_DIR NIXOS_K3S_CURRENT_SYSTEM NIXOS_K3S_SYSTEM_PROFILE)

SUBCOMMAND=${1:-}
RELEASE=""

case ":$PATH:" in
*:/run/current-system/sw/bin:*) ;;
*) PATH=$PATH:/run/current-system/sw/bin ;;
esac

# Output to the SSH client is best effort: when the connection drops the work goes on (a lost
# session must not leave a half-done step), and everything also lands in the on-host log.
trap '' HUP PIPE

say() {
  printf '%s [%s%s] %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$SUBCOMMAND" "${RELEASE:+ $RELEASE}" \
    "$*" >>"$LOG" 2>/dev/null || true
  printf '%s\n' "$*" >&2 2>/dev/null || true
}

log_tail() {
  printf -- '--- last 30 lines of %s on %s ---\n' "$LOG" "$(uname -n)" >&2 2>/dev/null || true
  tail -n 30 "$LOG" >&2 2>/dev/null || true
}

die() {
  local code=$1
  shift
  say "ERROR: $*"
  log_tail
  exit "$code"
}

usage() {
  printf 'usage: host-activate.sh receive|build|restarts|activate|confirm|rollback|status ...\n' >&2
  exit 2
}

# Runs a command with its output in the log and (best effort) on stderr.
run_logged() {
  say "+ $*"
  local status=0
  "$@" 2>&1 | tee -a --output-error=warn "$LOG" >&2 2>/dev/null || status=${PIPESTATUS[0]}
  return "$status"
}

valid_release_id() {
  [[ $1 =~ ^[A-Za-z0-9_-][A-Za-z0-9._-]*$ ]]
}

valid_host_name() {
  [[ $1 =~ ^[A-Za-z0-9_-][A-Za-z0-9._-]*$ ]]
}

valid_seconds() {
  [[ $1 =~ ^[0-9]+$ ]] && ((10#$1 > 0))
}

prepare_state() {
  mkdir -p "$RELEASES"
  chmod 0700 "$STATE"
  if [[ -f $LOG ]] && (($(wc -c <"$LOG") > LOG_MAX_BYTES)); then
    mv -f "$LOG" "$LOG.1"
  fi
  touch "$LOG"
  chmod 0600 "$LOG"
}

take_lock() {
  exec 9>"$STATE/lock"
  flock -w 900 9 || die 1 "another deployment holds $STATE/lock"
  record_owner
}

# Who holds the lock, for a rollback that must not wait on a hung activation. Caller holds it.
record_owner() {
  write_atomically "$STATE/lock.owner" "command=$SUBCOMMAND
pid=$$${1:+
$1}"
}

owner_get() {
  file_get "$STATE/lock.owner" "$1"
}

# Stops the switch-to-configuration unit(s) of nixos-rebuild and waits until they are gone.
stop_switch_units() {
  run_logged systemctl stop "$SWITCH_UNITS" || say "warning: could not stop $SWITCH_UNITS"
}

# TERM to the activation's process group, KILL to whatever is left after STOP_GRACE seconds.
stop_process_group() {
  local pgid=$1 waited=0
  [[ $pgid =~ ^[0-9]+$ ]] && ((pgid > 1)) || return 0
  kill -TERM -- "-$pgid" 2>/dev/null || return 0
  while kill -0 -- "-$pgid" 2>/dev/null && ((waited < STOP_GRACE * 10)); do
    sleep 0.1
    waited=$((waited + 1))
  done
  kill -KILL -- "-$pgid" 2>/dev/null || true
}

# The rollback's lock: an activation (`switch-to-configuration test`) that still holds it is stopped,
# never waited on.
take_lock_for_rollback() {
  exec 9>"$STATE/lock"
  if ! flock -n 9; then
    local holder pid activation
    holder=$(owner_get command)
    pid=$(owner_get pid)
    activation=$(owner_get activation)
    if [[ $holder != activate || -z $activation ]]; then
      # Another step (or an activate step still building: no timer of its own is armed yet)
      # ends by itself; only a running activation is stopped.
      say "waiting for the ${holder:-unknown} step (pid ${pid:-?}) that holds $STATE/lock"
      flock -w 900 9 || die 1 "the ${holder:-unknown} step still holds $STATE/lock after 900s"
    else
      say "the activation (pid $pid) still holds $STATE/lock: stopping it"
      stop_process_group "$activation"
      stop_switch_units
      if ! flock -w "$STOP_GRACE" 9; then
        if [[ $pid =~ ^[0-9]+$ ]] && [[ $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) == *host-activate.sh* ]]; then
          say "activate step (pid $pid) did not let go of the lock: killing it"
          kill -KILL "$pid" 2>/dev/null || true
        fi
        flock -w "$STOP_GRACE" 9 || die 1 "cannot stop the activation that holds $STATE/lock"
      fi
    fi
  fi
  record_owner
}

resolve() {
  readlink -f "$1" 2>/dev/null || true
}

pending_get() {
  file_get "$PENDING" "$1"
}

# The value of KEY in a file of key=value lines (nothing when absent).
file_get() {
  local file=$1 key=$2 line
  [[ -f $file ]] || return 0
  while IFS= read -r line; do
    if [[ $line == "$key="* ]]; then
      printf '%s\n' "${line#*=}"
      return 0
    fi
  done <"$file"
}

write_atomically() {
  local target=$1 content=$2 tmp
  tmp=$(mktemp "$target.XXXXXX")
  printf '%s\n' "$content" >"$tmp"
  mv -f "$tmp" "$target"
}

flake_ref() {
  printf 'path:%s#%s' "$RELEASES/$1/flake" "$2"
}

cmd_receive() {
  (($# == 2)) || usage
  local id=$1 sha=$2
  valid_release_id "$id" || die 2 "invalid release id: $id"
  [[ $sha =~ ^[0-9a-f]{64}$ ]] || die 2 "invalid sha256: $sha"
  RELEASE=$id
  prepare_state
  take_lock
  # Incoming dirs left by an interrupted upload are stale: we hold the lock.
  find "$RELEASES" -mindepth 1 -maxdepth 1 -name '.incoming.*' -exec rm -rf {} +
  if [[ -d $RELEASES/$id/flake ]]; then
    cat >/dev/null
    say "release $id already present; reusing it"
    return 0
  fi
  incoming=$(mktemp -d "$RELEASES/.incoming.XXXXXX")
  trap 'rm -rf "$incoming"' EXIT
  cat >"$incoming/release.tar"
  local got
  got=$(sha256sum "$incoming/release.tar")
  got=${got%% *}
  if [[ $got != "$sha" ]]; then
    die 1 "upload of release $id is incomplete or corrupt (sha256 $got, expected $sha)"
  fi
  mkdir "$incoming/flake"
  tar -xf "$incoming/release.tar" -C "$incoming/flake" --no-same-owner ||
    die 1 "cannot extract release $id"
  rm -f "$incoming/release.tar"
  mv -T "$incoming" "$RELEASES/$id"
  trap - EXIT
  say "received release $id"
}

save_self() {
  local tmp
  tmp=$(mktemp "$STATE/host-activate.sh.XXXXXX")
  if [[ -n ${BASH_EXECUTION_STRING:-} ]]; then
    printf '%s\n' "$BASH_EXECUTION_STRING" >"$tmp"
  else
    cat "$0" >"$tmp"
  fi
  chmod 0700 "$tmp"
  mv -f "$tmp" "$STATE/host-activate.sh"
}

clear_rollback_units() {
  systemctl stop "$ROLLBACK_UNIT.timer" "$ROLLBACK_UNIT.service" >/dev/null 2>&1 || true
  systemctl reset-failed "$ROLLBACK_UNIT.timer" "$ROLLBACK_UNIT.service" >/dev/null 2>&1 || true
}

arm_rollback() {
  local id=$1 timeout=$2 bash_bin var
  bash_bin=$(resolve "$(command -v bash)")
  save_self
  clear_rollback_units
  local -a setenv=(--setenv="PATH=$PATH")
  for var in "${TEST_ENV_VARS[@]}"; do
    if [[ -n ${!var:-} ]]; then
      setenv+=(--setenv="$var=${!var}")
    fi
  done
  run_logged systemd-run --unit="$ROLLBACK_UNIT" --collect --quiet \
    --description="nixos-k3s: roll back release $id unless confirmed" \
    --on-active="${timeout}s" --timer-property=AccuracySec=1s "${setenv[@]}" \
    "$bash_bin" "$STATE/host-activate.sh" rollback "$id"
}

disarm_rollback() {
  run_logged systemctl stop "$ROLLBACK_UNIT.timer" || say "warning: could not stop $ROLLBACK_UNIT.timer"
}

# Re-activates the generation recorded before the pending activation. Caller holds the lock.
rollback_pending() {
  local previous release
  previous=$(pending_get previous)
  release=$(pending_get release)
  [[ -n $previous ]] || return 0
  say "rolling back release $release to $previous"
  local status=0
  run_logged timeout --kill-after="$STOP_GRACE" "$ROLLBACK_SWITCH_LIMIT" \
    "$previous/bin/switch-to-configuration" test || status=$?
  hold_k3s_again
  rm -f "$PENDING" "$ACTIVATED"
  write_atomically "$STATE/last-rollback" "release=$release previous=$previous at=$(date -u +%s)"
  disarm_rollback
  if ((status != 0)); then
    say "warning: switch-to-configuration of $previous exited $status (some units failed)"
  fi
  if [[ $(resolve "$CURRENT_SYSTEM") != "$(resolve "$previous")" ]]; then
    say "ERROR: rollback did not make $previous current"
    return 1
  fi
  say "rolled back to $previous"
}

# After a failed `switch`, the system profile (and the boot entry) may already name the new
# generation: point both back at the one recorded before the activation. Caller holds the lock.
restore_boot_profile() {
  local previous
  previous=$(pending_get previous)
  [[ -n $previous ]] || return 0
  if [[ $(resolve "$SYSTEM_PROFILE") != "$(resolve "$previous")" ]]; then
    say "restoring the boot profile to $previous"
    run_logged nix-env --profile "$SYSTEM_PROFILE" --set "$previous" ||
      say "warning: could not reset $SYSTEM_PROFILE"
    run_logged "$previous/bin/switch-to-configuration" boot ||
      say "warning: could not restore the boot entry of $previous"
  fi
}

# True when k3s has never been released on this host: no marker and no confirmed release yet
# (a host deployed before the hold existed runs k3s without the marker; it is not held).
k3s_held() {
  [[ ! -e $RELEASED && ! -e $STATE/current-release ]]
}

# Lets k3s start from now on. On a held host, remembers that this release did it, so a rollback
# holds it again. A host deployed before the hold existed runs k3s without the file: it gets the
# file too (or its next system would skip k3s), and a rollback leaves k3s as it was, running.
release_k3s() {
  local id=$1
  [[ ! -e $RELEASED ]] || return 0
  if k3s_held; then
    write_atomically "$RELEASE_PENDING" "$id"
  fi
  write_atomically "$RELEASED" "released by $id at $(date -u +%s)"
  say "k3s released by release $id"
}

# After the activation that released k3s: start it (activation leaves unchanged units alone).
start_released_k3s() {
  [[ -f $RELEASE_PENDING ]] || return 0
  run_logged systemctl start --no-block "$HELD_UNIT" || say "warning: could not start $HELD_UNIT"
}

# Part of a rollback: the host goes back to k3s held, as it was before the activation.
hold_k3s_again() {
  [[ -f $RELEASE_PENDING ]] || return 0
  say "holding k3s again (released by $(<"$RELEASE_PENDING"))"
  rm -f "$RELEASED"
  run_logged systemctl stop "$HELD_UNIT" || say "warning: could not stop $HELD_UNIT"
  rm -f "$RELEASE_PENDING"
}

# Starts downloading the release's CNI images (nixos-k3s-cni-fetch, nixos/modules/cni-images.nix:
# on every k3s host's PATH, so in the Hetzner image) while the release builds, before k3s runs
# and pulls them: a transient unit, so it outlives this SSH session. Best effort: when the
# running system lacks the tool (an older image), or systemd-run fails (a fetch already running
# holds the unit name), the build goes on, and k3s-pre-pull pulls whatever is missing. The
# command of a transient service is an absolute path (systemd-run(1)); --no-block only enqueues
# the start; --collect unloads the unit even when it failed.
start_early_fetch() {
  local id=$1 name=$2 tool=$CURRENT_SYSTEM/sw/bin/nixos-k3s-cni-fetch
  [[ -x $tool ]] || return 0
  run_logged systemd-run --unit=k3s-cni-fetch-early --collect --no-block --quiet \
    --description="nixos-k3s: download the CNI images of release $id" \
    "$tool" --host-json "$RELEASES/$id/flake/hosts/$name.json" ||
    say "warning: could not start the early download of the CNI images; k3s pulls them"
}

# Builds release ID (a no-op when an earlier build step left its result); prints nothing.
build_release() {
  local id=$1 name=$2 dir=$RELEASES/$1 built
  built=$(resolve "$dir/result")
  if [[ -n $built && -x $built/bin/switch-to-configuration ]]; then
    say "release $id already built: $built"
    return 0
  fi
  start_early_fetch "$id" "$name"
  say "building $(flake_ref "$id" "$name")"
  (cd "$dir" && run_logged nixos-rebuild build --no-reexec --flake "$(flake_ref "$id" "$name")") ||
    die 3 "build of release $id failed; nothing was activated"
  built=$(resolve "$dir/result")
  [[ -x $built/bin/switch-to-configuration ]] || die 3 "build of release $id produced no system"
}

# `build` and `restarts`: the received release ID built for host NAME, under the lock.
build_received() {
  (($# == 2)) || usage
  local id=$1 name=$2
  valid_release_id "$id" || die 2 "invalid release id: $id"
  valid_host_name "$name" || die 2 "invalid host name: $name"
  RELEASE=$id
  prepare_state
  take_lock
  [[ -d $RELEASES/$id/flake ]] || die 1 "release $id was not received"
  touch "$RELEASES/$id"
  build_release "$id" "$name"
}

cmd_build() {
  build_received "$@"
  say "release $1 built; nothing activated"
}

# The containers (`container@NAME.service`) that activating release ID would stop or restart,
# one NAME a line: what the built system's `switch-to-configuration dry-activate` says against
# the running one. A container whose system or settings changed is stopped and started again
# (nixos-containers: restartTriggers on its system path and its .conf, restartIfChanged), and its
# k3s node with it, pods and all. dry-activate writes one line per verb to stderr, units joined
# by ", " (switch-to-configuration-ng main.rs, as the Perl one before it: "would stop the
# following units: ...", "would restart the following units: ..."); it changes nothing.
cmd_restarts() {
  build_received "$@"
  local id=$1 built report
  built=$(resolve "$RELEASES/$id/result")
  report=$("$built/bin/switch-to-configuration" dry-activate 2>&1 >/dev/null) ||
    die 1 "dry activation of release $id failed"
  printf '%s\n' "$report" >>"$LOG"
  printf '%s\n' "$report" |
    sed -n -e 's/^would stop the following units: //p' -e 's/^would restart the following units: //p' |
    tr ',' '\n' | sed -n 's/^ *container@\([A-Za-z0-9_-][A-Za-z0-9._-]*\)\.service *$/\1/p' |
    LC_ALL=C sort -u
}

already_current() {
  local id=$1 built
  built=$(resolve "$RELEASES/$id/result")
  [[ ! -f $PENDING && -n $built && -f $STATE/current-release ]] &&
    [[ $(<"$STATE/current-release") == "$id" ]] &&
    [[ $(resolve "$CURRENT_SYSTEM") == "$built" && $(resolve "$SYSTEM_PROFILE") == "$built" ]]
}

cmd_activate() {
  (($# == 3 || $# == 4)) || usage
  local id=$1 name=$2 timeout=$3 join_timeout=${4:-$3}
  valid_release_id "$id" || die 2 "invalid release id: $id"
  valid_host_name "$name" || die 2 "invalid host name: $name"
  valid_seconds "$timeout" || die 2 "invalid rollback timeout: $timeout"
  valid_seconds "$join_timeout" || die 2 "invalid join timeout: $join_timeout"
  RELEASE=$id
  prepare_state
  take_lock
  local dir=$RELEASES/$id
  [[ -d $dir/flake ]] || die 1 "release $id was not received"
  touch "$dir"
  if already_current "$id"; then
    say "release $id is already active and persisted; nothing to activate"
    return 0
  fi
  local previous
  previous=$(resolve "$SYSTEM_PROFILE")
  [[ -x $previous/bin/switch-to-configuration ]] ||
    die 1 "no previous generation at $SYSTEM_PROFILE to roll back to"

  build_release "$id" "$name"
  local built
  built=$(resolve "$dir/result")
  if k3s_held && ((10#$join_timeout > 10#$timeout)); then
    say "this activation starts k3s for the first time: rollback timeout ${join_timeout}s (join timeout)"
    timeout=$join_timeout
  fi

  rm -f "$ACTIVATED"
  write_atomically "$PENDING" "release=$id
name=$name
previous=$previous
new=$built
deadline=$(($(date +%s) + 10#$timeout))"
  arm_rollback "$id" "$timeout" || {
    rm -f "$PENDING"
    die 1 "cannot arm the rollback timer; nothing was activated"
  }
  release_k3s "$id"
  local limit=$((10#$timeout * 2 / 3)) status=0
  ((limit >= 1)) || limit=1
  say "activating $built (deadline ${limit}s; rollback to $previous in ${timeout}s unless confirmed)"
  run_activation "$id" "$limit" || status=$?
  if ((status == 124 || status == 137 || status == 143)); then
    stop_switch_units
    rollback_pending || true
    die 4 "activation of release $id did not finish within ${limit}s (switch-to-configuration test hung or was stopped); stopped it and rolled back to $previous"
  elif ((status != 0)); then
    rollback_pending || true
    die 4 "activation of release $id failed; rolled back to $previous"
  fi
  if [[ $(resolve "$CURRENT_SYSTEM") != "$built" ]]; then
    rollback_pending || true
    die 4 "after activation $CURRENT_SYSTEM is not $built; rolled back to $previous"
  fi
  start_released_k3s
  write_atomically "$ACTIVATED" "$id"
  say "release $id activated; waiting for confirmation"
  printf '%s\n' "$((10#$timeout))"
}

# The built system's `switch-to-configuration test`, as `nixos-rebuild test` would run it but
# without evaluating the flake again (the build step did; its result is this release's system),
# in a session (and process group) of its own, under `timeout` (which
# signals that whole group), recorded in lock.owner so that the rollback can stop it too. The
# lock's descriptor is not inherited: a stray process must not keep the lock. Returns its status
# (124/137: the deadline hit).
run_activation() {
  local id=$1 limit=$2 status=0 pgid built
  built=$(resolve "$RELEASES/$id/result")
  say "+ $built/bin/switch-to-configuration test (deadline ${limit}s)"
  (exec setsid timeout --kill-after="$STOP_GRACE" "$limit" \
    "$built/bin/switch-to-configuration" test) 9>&- \
    > >(tee -a --output-error=warn "$LOG" >&2 2>/dev/null 9>&-) 2>&1 &
  pgid=$!
  record_owner "activation=$pgid"
  wait "$pgid" || status=$?
  record_owner
  return "$status"
}

# Waits until every unit is active or the time is up; prints the units that are not active.
# poll_until's own message is dropped: the caller reports the units through say (and the log).
wait_units_active() {
  local seconds=$1
  shift
  poll_until "$seconds" 1 "units not active" units_active "$@" 2>/dev/null && return 0
  printf '%s\n' "$INACTIVE_UNITS"
  return 1
}

# True when every unit is active; else INACTIVE_UNITS lists the others as UNIT=STATE.
units_active() {
  local unit
  local -a inactive=()
  for unit in "$@"; do
    systemctl is-active --quiet "$unit" || inactive+=("$unit=$(systemctl is-active "$unit" || true)")
  done
  INACTIVE_UNITS=${inactive[*]-}
  ((${#inactive[@]} == 0))
}

cmd_confirm() {
  (($# >= 3)) || usage
  local id=$1 name=$2 health_timeout=$3
  shift 3
  valid_release_id "$id" || die 2 "invalid release id: $id"
  valid_host_name "$name" || die 2 "invalid host name: $name"
  valid_seconds "$health_timeout" || die 2 "invalid health timeout: $health_timeout"
  RELEASE=$id
  prepare_state
  take_lock
  local failing
  if already_current "$id"; then
    if ! failing=$(wait_units_active "$health_timeout" "$@"); then
      die 5 "release $id is persisted but not healthy: $failing (no pending activation to roll back)"
    fi
    say "release $id is already confirmed and healthy"
    return 0
  fi
  if [[ $(pending_get release) != "$id" ]]; then
    die 6 "no pending activation of release $id: the rollback timer already fired or activate did not run"
  fi
  local built deadline remaining
  built=$(pending_get new)
  if [[ ! -f $ACTIVATED || $(<"$ACTIVATED") != "$id" ]]; then
    rollback_pending || true
    die 4 "activation of release $id did not complete; rolled back"
  fi
  if [[ $(resolve "$CURRENT_SYSTEM") != "$built" ]]; then
    rollback_pending || true
    die 6 "$CURRENT_SYSTEM is not the activated $built; rolled back"
  fi
  deadline=$(pending_get deadline)
  remaining=$((deadline - $(date +%s) - CONFIRM_MARGIN))
  # The release that first started k3s waits for it as long as its deadline allows (the join).
  if ((remaining < health_timeout)) || [[ -f $RELEASE_PENDING && $(<"$RELEASE_PENDING") == "$id" ]]; then
    health_timeout=$((remaining > 1 ? remaining : 1))
  fi
  say "health check: ${*:-no units} (up to ${health_timeout}s)"
  if ! failing=$(wait_units_active "$health_timeout" "$@"); then
    rollback_pending || true
    die 5 "health check of release $id failed: $failing; rolled back"
  fi
  disarm_rollback
  if [[ $(pending_get release) != "$id" || $(resolve "$CURRENT_SYSTEM") != "$built" ]]; then
    die 6 "the rollback timer fired before release $id was confirmed"
  fi
  # Persist: what `nixos-rebuild switch` does after its evaluation and build (profile, then
  # switch-to-configuration), with `boot`, because `test` activated this system already.
  if ! {
    run_logged nix-env --profile "$SYSTEM_PROFILE" --set "$built" &&
      run_logged "$built/bin/switch-to-configuration" boot
  }; then
    restore_boot_profile
    rollback_pending || true
    die 1 "persisting release $id to the boot profile failed; rolled back to the previous generation"
  fi
  write_atomically "$STATE/current-release" "$id"
  rm -f "$PENDING" "$ACTIVATED" "$RELEASE_PENDING"
  say "release $id confirmed and persisted"
  prune_releases "$id"
}

prune_releases() {
  local keep_id=$1 kept=0 entry id
  local -a entries
  mapfile -t entries < <(find "$RELEASES" -mindepth 1 -maxdepth 1 -type d ! -name '.*' \
    -printf '%T@ %f\n' | sort -rn)
  for entry in "${entries[@]}"; do
    id=${entry#* }
    [[ $id != "$keep_id" ]] || continue
    if ((kept < KEEP_RELEASES - 1)); then
      kept=$((kept + 1))
      continue
    fi
    say "pruning old release $id"
    rm -rf "${RELEASES:?}/$id"
  done
}

cmd_rollback() {
  (($# <= 1)) || usage
  local id=${1:-}
  RELEASE=$id
  prepare_state
  take_lock_for_rollback
  if [[ ! -f $PENDING ]]; then
    say "nothing pending; no rollback needed"
    return 0
  fi
  if [[ -n $id && $(pending_get release) != "$id" ]]; then
    say "pending activation is $(pending_get release), not $id; no rollback"
    return 0
  fi
  rollback_pending || die 1 "rollback failed"
}

cmd_status() {
  printf 'host: %s\n' "$(uname -n)"
  printf 'current-system: %s\n' "$(resolve "$CURRENT_SYSTEM")"
  printf 'boot-profile: %s\n' "$(resolve "$SYSTEM_PROFILE")"
  printf 'current-release: %s\n' "$(cat "$STATE/current-release" 2>/dev/null || true)"
  printf 'pending-release: %s\n' "$(pending_get release)"
  printf 'last-rollback: %s\n' "$(cat "$STATE/last-rollback" 2>/dev/null || true)"
  printf 'k3s-released: %s\n' "$(cat "$RELEASED" 2>/dev/null || echo 'no (held)')"
  printf -- '--- last 30 lines of %s ---\n' "$LOG"
  tail -n 30 "$LOG" 2>/dev/null || true
}

main() {
  (($# >= 1)) || usage
  shift
  umask 077
  case $SUBCOMMAND in
  receive) cmd_receive "$@" ;;
  build) cmd_build "$@" ;;
  restarts) cmd_restarts "$@" ;;
  activate) cmd_activate "$@" ;;
  confirm) cmd_confirm "$@" ;;
  rollback) cmd_rollback "$@" ;;
  status) cmd_status "$@" ;;
  *) usage ;;
  esac
}

main "$@"
