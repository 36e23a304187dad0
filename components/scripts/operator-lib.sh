# operator-lib.sh: helpers shared by the scripts that run on the OPERATOR machine
# (deploy.sh, install.sh). Sourced, never run; the sourcing script sets PROG to its name.
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
