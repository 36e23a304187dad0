#!/usr/bin/env bash
# nix-eval-hosts.sh [STACK...]: evaluate every host of the given stacks (default: the stack of
# every Pulumi.<stack>.yaml) with real Nix against the pinned flake in nixos/:
#
#   nix eval --raw path:<flake>#nixosConfigurations.<host>.config.system.build.toplevel.drvPath
#
# Each stack's hosts are rendered offline (`python -m tooling plan`: no credentials, no
# cloud) into hosts/ of a copy of nixos/, which is where flake.nix reads them from. A `path:`
# flake, as the deploy scripts build hosts (operator-lib.sh assemble_flake): untracked host
# files count, and the checkout is left as it was. flake.lock is used as it is, never updated.
#
# Needs Nix (flakes) and network access for the flake inputs. Runs in CI (preview.yml,
# deploy.yml) and locally: `.ci/nix-eval-hosts.sh` or `.ci/nix-eval-hosts.sh prod`.
# Environment: PYTHON (default .venv/bin/python when present, else python3), NIX (default nix).
#
# Exit 0: every host evaluates, with no evaluation warning but the known upstream one below;
# 1: a plan, an evaluation or a warning failed (every host is still tried); 2: bad arguments.
set -euo pipefail

PROG=nix-eval-hosts.sh
# The nixpkgs k3s module of the pinned revision warns on every agent (its condition is
# inverted); nothing in our configuration causes it.
KNOWN_WARNING="k3s: agentToken and agentToken should not be set if role is 'agent'"

usage() {
  printf 'usage: %s [STACK...]\n' "$PROG"
}

bad_input() {
  printf '%s: %s\n' "$PROG" "$*" >&2
  usage >&2
  exit 2
}

cd "$(dirname "$0")/.."
root=$PWD

stacks=()
if [ "$#" -eq 0 ]; then
  for file in Pulumi.*.yaml; do
    [ -e "$file" ] || continue
    stack=${file#Pulumi.}
    stacks+=("${stack%.yaml}")
  done
  [ "${#stacks[@]}" -gt 0 ] || bad_input "no Pulumi.<stack>.yaml in $root"
else
  for stack in "$@"; do
    case $stack in
      -h | --help)
        usage
        exit 0
        ;;
    esac
    [[ $stack =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || bad_input "not a stack name: '$stack'"
    [ -f "Pulumi.$stack.yaml" ] || bad_input "no stack file Pulumi.$stack.yaml in $root"
    stacks+=("$stack")
  done
fi

if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
NIX=${NIX:-nix}

work=$(mktemp -d "${RUNNER_TEMP:-${TMPDIR:-/tmp}}/nix-eval-hosts.XXXXXX")
trap 'rm -rf "$work"' EXIT

failed=0
results=()

fail() {
  echo "::error::$*"
  failed=1
}

# evaluate STACK HOST FLAKE: one host's toplevel derivation path, warnings checked
evaluate() {
  local stack=$1 host=$2 flake=$3 out err drv warnings status=0
  out=$work/eval.out err=$work/eval.err
  "$NIX" --extra-experimental-features 'nix-command flakes' eval --raw --no-update-lock-file \
    "path:$flake#nixosConfigurations.$host.config.system.build.toplevel.drvPath" \
    >"$out" 2>"$err" || status=$?
  cat "$err" >&2
  if [ "$status" -ne 0 ]; then
    fail "stack $stack: host $host does not evaluate (nix exit $status); see the log above"
    results+=("| \`$stack\` | \`$host\` | :x: evaluation failed |")
    return
  fi
  drv=$(<"$out")
  if ! [[ $drv =~ ^/nix/store/[0-9a-z]{32}-[^/]+\.drv$ ]]; then
    fail "stack $stack: host $host: nix eval printed no derivation path: '$drv'"
    results+=("| \`$stack\` | \`$host\` | :x: no derivation |")
    return
  fi
  # The warnings of NixOS modules, printed when the toplevel is evaluated: `evaluation warning: `
  # (builtins.warn, Nix 2.23 and later), `trace: evaluation warning: ` (nixpkgs lib.warn on
  # older Nix), `trace: warning: ` (older nixpkgs); colours removed. Nix's own `warning: `
  # lines (settings, substituters) are not about the configuration.
  warnings=$(sed -E $'s/\x1b\\[[0-9;]*m//g' "$err" |
    sed -n -E 's/^(evaluation warning|trace: (evaluation )?warning): //p' |
    grep -v -x -F -e "$KNOWN_WARNING" || true)
  if [ -n "$warnings" ]; then
    while IFS= read -r line; do
      fail "stack $stack: host $host: NixOS warning: $line"
    done <<<"$warnings"
    results+=("| \`$stack\` | \`$host\` | :x: warnings |")
    return
  fi
  printf 'ok %s %s %s\n' "$stack" "$host" "$drv"
  results+=("| \`$stack\` | \`$host\` | \`$drv\` |")
}

for stack in "${stacks[@]}"; do
  plan=$work/plans/$stack
  if ! "$PYTHON" -m tooling plan --stack "$stack" --out "$plan" --quiet; then
    fail "the offline plan of stack $stack fails: its hosts cannot be rendered"
    results+=("| \`$stack\` | | :x: offline plan failed |")
    continue
  fi
  flake=$work/flakes/$stack
  mkdir -p "$flake"
  cp -R nixos/. "$flake/"
  rm -rf "$flake/hosts"
  mkdir "$flake/hosts"
  hosts=()
  for file in "$plan"/hosts/*.json; do
    [ -e "$file" ] || continue
    host=$(basename "$file" .json)
    if ! [[ $host =~ ^[a-z0-9]([a-z0-9-]*[a-z0-9])?$ ]]; then
      fail "stack $stack: host file $host.json is not named like a host"
      continue
    fi
    cp "$file" "$flake/hosts/"
    hosts+=("$host")
  done
  chmod -R u+rwX,go+rX,go-w "$flake"
  if [ "${#hosts[@]}" -eq 0 ]; then
    fail "stack $stack renders no hosts"
    continue
  fi
  for host in "${hosts[@]}"; do
    evaluate "$stack" "$host" "$flake"
  done
done

if [ -n "${GITHUB_STEP_SUMMARY:-}" ]; then
  {
    echo "## NixOS evaluation of every host"
    echo
    echo "\`nix eval\` of each host's \`system.build.toplevel.drvPath\` against \`nixos/flake.lock\`."
    echo
    echo "| stack | host | derivation |"
    echo "| --- | --- | --- |"
    printf '%s\n' "${results[@]}"
  } >>"$GITHUB_STEP_SUMMARY"
fi
exit "$failed"
