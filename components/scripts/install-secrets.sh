#!/usr/bin/env bash
# install-secrets.sh: write secret files from a record bundle, each atomically.
#
# Runs ON THE HOST as root (remote.Command: `bash -c '<this text>' install-secrets.sh`); install.sh
# also runs it on the operator machine to stage nixos-anywhere's --extra-files tree.
# Args: none.
# Stdin: one record per line, `<absolute path>\t<octal mode>\t<base64 content>`. Records whose
#   path starts with @ belong to install.sh and are refused here.
# Env: INSTALL_ROOT (default empty: the real /) is prefixed to every path; NEW_DIR_MODE (0700 or
#   0755, default 0700) is the mode of parent directories this script has to create.
# Writes each file to a temp file in the same directory (umask 077, owner root when run as root,
#   the record's mode), then renames it over the target. Prints only the paths written.
# Exit codes: 0 all written; 1 a write failed; 2 a bad record (nothing written).
# Portable to the bash 3.2 and BSD tools of macOS.
set -euo pipefail

INSTALL_ROOT=${INSTALL_ROOT:-}
NEW_DIR_MODE=${NEW_DIR_MODE:-0700}
TAB=$(printf '\t')
readonly TAB

PATHS=()
MODES=()
CONTENTS=()
TMP_FILE=""

cleanup() {
  if [[ -n $TMP_FILE ]]; then
    rm -f "$TMP_FILE"
  fi
}

reject() {
  printf 'install-secrets.sh: record %s: %s\n' "$1" "$2" >&2
  exit 2
}

valid_path() {
  local path=$1
  [[ $path == /* && $path != */ && $path != *//* ]] || return 1
  case /$path/ in
  */./* | */../*) return 1 ;;
  esac
  [[ $path =~ ^[A-Za-z0-9._/@+-]+$ ]]
}

parse_records() {
  local line number=0 path mode content rest index
  while IFS= read -r line || [[ -n $line ]]; do
    number=$((number + 1))
    [[ -n $line ]] || continue
    IFS=$TAB read -r path mode content rest <<<"$line"
    [[ -z ${rest:-} && -n ${content:-} ]] || reject "$number" "expected <path><TAB><mode><TAB><base64>"
    [[ $path != @* ]] || reject "$number" "special record $path is not a file on the host"
    valid_path "$path" || reject "$number" "not a clean absolute path: $path"
    [[ $mode =~ ^0?[0-7]{3}$ ]] || reject "$number" "mode of $path is not octal: $mode"
    [[ $content =~ ^[A-Za-z0-9+/]*={0,2}$ ]] || reject "$number" "content of $path is not base64"
    printf '%s' "$content" | base64 --decode >/dev/null 2>&1 ||
      reject "$number" "content of $path is not base64"
    for ((index = 0; index < ${#PATHS[@]}; index++)); do
      [[ ${PATHS[index]} != "$path" ]] || reject "$number" "duplicate path $path"
    done
    PATHS+=("$path")
    MODES+=("$mode")
    CONTENTS+=("$content")
  done
}

make_parent() {
  local dir=$1
  [[ -d $dir ]] && return 0
  case $NEW_DIR_MODE in
  0700 | 700) (umask 077 && mkdir -p "$dir") ;;
  0755 | 755) (umask 022 && mkdir -p "$dir") ;;
  *)
    printf 'install-secrets.sh: NEW_DIR_MODE must be 0700 or 0755\n' >&2
    exit 2
    ;;
  esac
}

write_file() {
  local path=$1 mode=$2 content=$3 target dir
  target=$INSTALL_ROOT$path
  dir=$(dirname "$target")
  make_parent "$dir"
  TMP_FILE=$(mktemp "$dir/.install-secrets.XXXXXX")
  printf '%s' "$content" | base64 --decode >"$TMP_FILE"
  chmod "$mode" "$TMP_FILE"
  if [[ $(id -u) == 0 ]]; then
    chown 0:0 "$TMP_FILE"
  fi
  mv -f "$TMP_FILE" "$target"
  TMP_FILE=""
  printf 'wrote %s (mode %s)\n' "$path" "$mode"
}

main() {
  (($# == 0)) || {
    printf 'usage: install-secrets.sh < records\n' >&2
    exit 2
  }
  umask 077
  trap cleanup EXIT
  parse_records
  local index
  for ((index = 0; index < ${#PATHS[@]}; index++)); do
    write_file "${PATHS[index]}" "${MODES[index]}" "${CONTENTS[index]}"
  done
}

main "$@"
