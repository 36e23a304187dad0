#!/usr/bin/env bash
# install-secrets.sh: write secret files from a record bundle, each atomically.
#
# Runs ON THE HOST as root (remote.Command: `bash -c '<this text>' install-secrets.sh`); install.sh
# also runs it on the operator machine to stage nixos-anywhere's --extra-files tree.
# Args: none.
# Stdin: a header line `nixos-k3s-bundle v1 <records> <sha256>`, then <records> lines, each
#   `<absolute path>\t<octal mode>\t<base64 content>\n`; <sha256> is the hex SHA-256 of every byte
#   after the header line. A bundle cut short, altered or with extra bytes fails that check and
#   nothing is written. Records whose path starts with @ belong to install.sh and are refused here.
# `install-secrets.sh --verify` checks the same way, allows the @ records and prints the verified
#   record lines on stdout instead of writing anything (install.sh reads its bundle through it).
# Env: INSTALL_ROOT (default empty: the real /) is prefixed to every path; NEW_DIR_MODE (0700 or
#   0755, default 0700) is the mode of parent directories this script has to create.
# Writes each file to a temp file in the same directory (umask 077, owner root when run as root,
#   the record's mode), then renames it over the target. Prints only the paths written.
# Exit codes: 0 all written; 1 a write failed; 2 a bad bundle or record (nothing written).
# Portable to the bash 3.2 and BSD tools of macOS.
set -euo pipefail

INSTALL_ROOT=${INSTALL_ROOT:-}
NEW_DIR_MODE=${NEW_DIR_MODE:-0700}
TAB=$(printf '\t')
readonly TAB

readonly BUNDLE_FORMAT="nixos-k3s-bundle v1"
PATHS=()
MODES=()
CONTENTS=()
TMP_FILE=""
ALLOW_SPECIAL=0

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

refuse_bundle() {
  printf 'install-secrets.sh: refusing the bundle: %s; nothing was written\n' "$1" >&2
  exit 2
}

# shellcheck source-path=SCRIPTDIR source=operator-lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/operator-lib.sh" # inline on hosts: sha256_stdin

# Reads all of stdin and checks it against its header; sets BODY to the record lines. The bundle
# stays in memory (no here-string or temp file holds the secrets).
read_verified_bundle() {
  local input header expected_count expected_sum actual_sum lines
  input=$(
    cat
    printf x
  )
  input=${input%x}
  [[ $input == *$'\n'* ]] || refuse_bundle "no header line (empty or cut input)"
  header=${input%%$'\n'*}
  BODY=${input#*$'\n'}
  if ! [[ $header =~ ^nixos-k3s-bundle\ v1\ ([0-9]+)\ ([0-9a-f]{64})$ ]]; then
    refuse_bundle "the first line is not '$BUNDLE_FORMAT <records> <sha256>'"
  fi
  expected_count=${BASH_REMATCH[1]}
  expected_sum=${BASH_REMATCH[2]}
  actual_sum=$(printf '%s' "$BODY" | sha256_stdin)
  [[ $actual_sum == "$expected_sum" ]] ||
    refuse_bundle "sha256 of the records does not match the header: the bundle is cut short, altered or has extra bytes"
  lines=$(printf '%s' "$BODY" | wc -l)
  lines=$((10#${lines// /}))
  [[ -z $BODY || $BODY == *$'\n' ]] || refuse_bundle "the last record has no newline"
  ((lines == 10#$expected_count)) ||
    refuse_bundle "the header announces $expected_count records, the bundle holds $lines"
}

parse_records() {
  local body=$BODY line number=0 path mode content rest index
  while [[ -n $body ]]; do
    line=${body%%$'\n'*}
    body=${body#*$'\n'}
    number=$((number + 1))
    [[ $line == *"$TAB"*"$TAB"* ]] || reject "$number" "expected <path><TAB><mode><TAB><base64>"
    path=${line%%"$TAB"*}
    rest=${line#*"$TAB"}
    mode=${rest%%"$TAB"*}
    content=${rest#*"$TAB"}
    [[ $content != *"$TAB"* && -n $content ]] || reject "$number" "expected <path><TAB><mode><TAB><base64>"
    if [[ $path == @* ]]; then
      ((ALLOW_SPECIAL)) || reject "$number" "special record $path is not a file on the host"
      [[ $path =~ ^@[a-z-]+$ ]] || reject "$number" "not a special record name: $path"
    else
      valid_path "$path" || reject "$number" "not a clean absolute path: $path"
    fi
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
  if (($# == 1)) && [[ $1 == --verify ]]; then
    ALLOW_SPECIAL=1
  elif (($# != 0)); then
    printf 'usage: install-secrets.sh [--verify] < bundle\n' >&2
    exit 2
  fi
  umask 077
  trap cleanup EXIT
  read_verified_bundle
  parse_records
  if ((ALLOW_SPECIAL)); then
    printf '%s' "$BODY"
    return 0
  fi
  local index
  for ((index = 0; index < ${#PATHS[@]}; index++)); do
    write_file "${PATHS[index]}" "${MODES[index]}" "${CONTENTS[index]}"
  done
}

main "$@"
