#!/usr/bin/env bash
# colima-delete.sh: delete the Colima VM of one dev node (pulumi destroy / replacement).
#
# Runs on:  the operator's Mac (pulumi_command local.Command, cwd = project root).
# Args:     none.
# Env:      PROFILE  Colima profile to delete; never "default" (other variables are ignored)
#           COLIMA   colima executable (default: colima)
# Stdin:    unused.
# Exit:     0 deleted or already absent; 1 colima failed or the profile is still listed;
#           2 bad environment.
# Only `--profile PROFILE` is ever passed to colima, so no other profile is touched. This
# program adds nothing to ~/.ssh/known_hosts (deploy/install pin host keys in temporary files),
# so there is no local state to remove besides what `colima delete` removes itself.
set -euo pipefail

COLIMA=${COLIMA:-colima}

die() {
	echo "colima-delete: $2" >&2
	exit "$1"
}

[[ ${PROFILE:-} =~ ^[a-z0-9][a-z0-9-]*$ ]] || die 2 "PROFILE must be [a-z0-9-]+, got '${PROFILE:-}'"
case "$PROFILE" in
default | colima | colima-*) die 2 "PROFILE '$PROFILE' is reserved for the user's own Colima VMs" ;;
esac

profile_exists() {
	local listing
	listing=$("$COLIMA" list --json) || die 1 "'colima list --json' failed"
	grep -qF "\"name\":\"$PROFILE\"," <<<"$listing"
}

if ! profile_exists; then
	echo "colima-delete: profile $PROFILE is already gone" >&2
	exit 0
fi
"$COLIMA" delete --profile "$PROFILE" --force >&2 || die 1 "colima delete --profile $PROFILE failed"
if profile_exists; then
	die 1 "profile $PROFILE is still listed after colima delete"
fi
echo "colima-delete: deleted profile $PROFILE" >&2
