# operator-lib.sh: helpers shared by the scripts that run on the OPERATOR machine
# (deploy.sh, install.sh). Sourced, never run; the sourcing script sets PROG to its name.
# Scripts that run on a host source it too, naming the functions they use; when such a script
# is sent to a host, those functions are put in its text instead (see inline_script).
# Portable to the bash 3.2 and BSD tools of macOS.
# shellcheck shell=bash

fail() {
  printf '%s: %s\n' "$PROG" "$*" >&2
  exit 1
}

bad_input() {
  printf '%s: %s\n' "$PROG" "$*" >&2
  exit 2
}

require_env() {
  local name
  for name in "$@"; do
    [[ -n ${!name:-} ]] || bad_input "environment variable $name is required"
  done
}

require_number() {
  if ! [[ ${!1} =~ ^[0-9]+$ ]] || ((10#${!1} == 0)); then
    bad_input "$1 must be a positive integer: ${!1}"
  fi
}

# The flake a host is built from: a copy of nixos/ with the host's data as hosts/<name>.json
# (a `path:` flake, so nothing depends on git tracking). Readable modes whatever the umask.
assemble_flake() {
  local flake=$1
  mkdir -p "$flake/hosts"
  cp -R "$NIXOS_SOURCE_DIR/." "$flake/"
  printf '%s\n' "$HOST_JSON" >"$flake/hosts/$HOST_NAME.json"
  chmod -R u+rwX,go+rX,go-w "$flake"
}

# POSIX single quoting, the same shell words shlex.quote produces.
shquote() {
  local escaped=${1//\'/\'\\\'\'}
  printf "'%s'" "$escaped"
}

# The remote command line for SCRIPT ARGS...: the script inline (see inline_script), exactly as
# components/scripts.py remote_invocation builds it (the host has no copy of this repository).
remote_command() {
  local script=$1 text word line
  shift
  text=$(inline_script "$script")
  line="bash -c $(shquote "$text") $script"
  for word in "$@"; do
    line+=" $(shquote "$word")"
  done
  printf '%s' "$line"
}

# SSH to TARGET_USER@TARGET_HOST:TARGET_PORT with $WORK/deploy-key, accepting only the pinned
# HOST_PUBLIC_KEY (never trust on first use). Sets SSH_OPTS and TARGET.
pinned_ssh_setup() {
  local key_type key_body
  read -r key_type key_body _ <<<"$HOST_PUBLIC_KEY"
  printf 'nixos-k3s-target %s %s\n' "$key_type" "$key_body" >"$WORK/known_hosts"
  SSH_OPTS=(-F none -T -p "$TARGET_PORT" -i "$WORK/deploy-key"
    -o IdentitiesOnly=yes -o IdentityAgent=none -o BatchMode=yes
    -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$WORK/known_hosts"
    -o GlobalKnownHostsFile=/dev/null -o HostKeyAlias=nixos-k3s-target -o UpdateHostKeys=no
    -o ControlMaster=no -o ControlPath=none
    -o ConnectTimeout="$SSH_CONNECT_TIMEOUT" -o ConnectionAttempts=1
    -o ServerAliveInterval=15 -o ServerAliveCountMax=4 -o LogLevel=ERROR)
  TARGET=$TARGET_USER@${TARGET_HOST:?}
}

# Runs SCRIPT ARGS... on the target (inline, see remote_command); ENV_PREFIX, if set, is put in
# front as `env K=V` words (non-secret values only: they are on the remote command line).
on_host_run() {
  # shellcheck disable=SC2029 # expanding here is the point: remote_command quotes every word.
  ssh "${SSH_OPTS[@]}" "$TARGET" "${ENV_PREFIX:-}$(remote_command "$@")"
}

# Dials until the host answers with the pinned key, or the attempts (or the deadline, in seconds
# since the epoch) run out (poll_ssh).
wait_for_ssh() {
  poll_ssh "${1:-}" "$TARGET_HOST:$TARGET_PORT not reachable" ssh "${SSH_OPTS[@]}" "$TARGET" true \
    </dev/null
}

# poll_ssh DEADLINE WHAT CONTACT [ARGS...]: runs CONTACT ARGS... (one contact over SSH, true
# when the host answered as wanted) up to SSH_CONNECT_ATTEMPTS times, SSH_RETRY_DELAY seconds
# apart, and prints "PROG: WHAT yet (attempt n/N)" and CONTACT's POLL_DETAIL after each try that
# fails. poll_until keeps the time: until DEADLINE (seconds since the epoch), or with DEADLINE
# empty as long as the attempts take when every contact waits its whole connect timeout.
# Returns 0 once CONTACT succeeds, 1 when the attempts or the time run out.
poll_ssh() {
  local deadline=$1 what=$2 seconds
  shift 2
  if [[ -n $deadline ]]; then
    seconds=$((deadline - $(date +%s)))
    ((seconds > 0)) || seconds=0
  else
    seconds=$((SSH_CONNECT_ATTEMPTS * (SSH_CONNECT_TIMEOUT + ${SSH_RETRY_DELAY%.*} + 1)))
  fi
  SSH_ATTEMPT=0 SSH_ANSWERED=0
  poll_until "$seconds" "$SSH_RETRY_DELAY" "$what" ssh_attempt "$what" "$@" &&
    ((SSH_ANSWERED))
}

# One try of poll_ssh: true when the contact succeeds (SSH_ANSWERED=1), and after the last
# attempt too, so that poll_until stops there.
ssh_attempt() {
  local what=$1
  shift
  SSH_ATTEMPT=$((SSH_ATTEMPT + 1))
  POLL_DETAIL=""
  if "$@"; then
    SSH_ANSWERED=1
    return 0
  fi
  printf '%s: %s yet (attempt %d/%d)%s\n' \
    "$PROG" "$what" "$SSH_ATTEMPT" "$SSH_CONNECT_ATTEMPTS" "$POLL_DETAIL" >&2
  ((SSH_ATTEMPT >= SSH_CONNECT_ATTEMPTS))
}

# Hex SHA-256 of stdin (sha256sum on Linux, shasum on macOS).
sha256_stdin() {
  local sum
  if command -v sha256sum >/dev/null 2>&1; then
    sum=$(sha256sum)
  else
    sum=$(shasum -a 256)
  fi
  printf '%s' "${sum%% *}"
}

# At most 400 characters of TEXT on one line, for a message that quotes a command's answer.
one_line() {
  local text=$1
  text=${text//$'\n'/ }
  printf '%s' "${text:0:400}"
}

# poll_until SECONDS INTERVAL WHAT CHECK [ARGS...]: runs CHECK ARGS... at once and then every
# INTERVAL seconds until it succeeds (returns 0) or SECONDS seconds have passed (returns 1, after
# the message "PROG: WHAT after SECONDSs" and POLL_DETAIL). WHAT says what has not happened, e.g.
# "node agent-1 not Ready". CHECK may set POLL_DETAIL to what its last try saw, with its own
# separator ("; last answer: ..."), and POLL_WHAT when its last try knows better than WHAT
# ("only 2 of 3 nodes Ready"). CHECK runs as a condition (errexit off): it tests what it runs.
poll_until() {
  local seconds=$1 interval=$2 what=$3 end
  shift 3
  end=$((SECONDS + 10#$seconds))
  POLL_DETAIL="" POLL_WHAT=""
  while ! "$@"; do
    if ((SECONDS >= end)); then
      printf '%s: %s after %ss%s\n' "$PROG" "${POLL_WHAT:-$what}" "$seconds" "$POLL_DETAIL" >&2
      return 1
    fi
    sleep "$interval"
  done
}

# The text of SCRIPT as it travels to a host, the same as components/scripts.py inline_script:
# its line `source ".../operator-lib.sh" # inline on hosts: NAME...` becomes the definitions of
# the functions NAME... from this file (a host has no copy of this repository).
inline_script() {
  local line name marker='^source .*/operator-lib\.sh" # inline on hosts: (.+)$'
  while IFS= read -r line || [[ -n $line ]]; do
    if [[ $line =~ $marker ]]; then
      for name in ${BASH_REMATCH[1]}; do
        lib_function "$name"
      done
    else
      printf '%s\n' "$line"
    fi
  done <"$SCRIPT_DIR/$1"
}

# The definition of function NAME in this file: from `NAME() {` to the first line `}`.
lib_function() {
  local line inside=0
  while IFS= read -r line; do
    [[ $line == "$1() {" ]] && inside=1
    ((inside)) || continue
    printf '%s\n' "$line"
    [[ $line == "}" ]] && return 0
  done <"$SCRIPT_DIR/operator-lib.sh"
  fail "operator-lib.sh has no function $1"
}
