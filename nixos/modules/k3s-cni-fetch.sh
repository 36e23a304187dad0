#!/usr/bin/env bash
# k3s-cni-fetch.sh LIST | --host-json FILE: download the CNI's images into OCI archives before k3s
# runs, so that k3s-pre-pull.sh only imports them and fetches their manifests once k3s starts.
# LIST has one reference a line; FILE is a host document, whose k3s.fetchImages are fetched (the
# list k3s-cni-fetch.service gets too: components/hosts/render.py fetch_images). Installed as
# nixos-k3s-cni-fetch (nixos/modules/cni-images.nix: skopeo, jq, coreutils and util-linux on its
# PATH, ARCHIVE_DIR and SKOPEO_POLICY set); run by k3s-cni-fetch.service (nixos/modules/k3s.nix)
# and, earlier, by host-activate.sh before it builds a release.
# ARCHIVE_DIR/sha256-<hex>.tar is the archive of the image whose (index) digest is sha256:<hex>;
# sha256-<hex>.imported is the pre-pull's marker that k3s's containerd has it. An image is
# skipped when either exists; archives and markers of images no longer listed are removed. The
# images are public: the directory is 0755 and its files 0644 (nspawn containers read it through a
# read-only bind, nixos/modules/k3s-containers.nix).
# Never fails: an image it cannot fetch is left to the pull. Log: one line per image.
# Env (tests): ARCHIVE_DIR, SKOPEO_POLICY, SKOPEO (skopeo), RETRY_TIMES (3), COMMAND_TIMEOUT (30m).
set -uo pipefail

readonly PROG=nixos-k3s-cni-fetch
readonly DIR=${ARCHIVE_DIR:?ARCHIVE_DIR is not set}
readonly POLICY=${SKOPEO_POLICY:?SKOPEO_POLICY is not set}
readonly SKOPEO=${SKOPEO:-skopeo}
readonly RETRY_TIMES=${RETRY_TIMES:-3} COMMAND_TIMEOUT=${COMMAND_TIMEOUT:-30m}

usage() {
  echo "usage: $PROG LIST | $PROG --host-json FILE" >&2
  exit 2
}

case ${1:-} in
--host-json)
  (($# == 2)) || usage
  listed=$(jq -r '(.k3s.fetchImages // [])[]' "$2") || {
    echo "$PROG: cannot read the images of host document $2; the pull fetches them" >&2
    exit 0
  }
  ;;
-* | "") usage ;;
*)
  (($# == 1)) || usage
  listed=$(LC_ALL=C sort -u "$1") || {
    echo "$PROG: cannot read image list $1; the pull fetches the images" >&2
    exit 0
  }
  ;;
esac
images=()
while IFS= read -r image; do
  [[ -n $image ]] && images+=("$image")
done <<<"$listed"

umask 022
if ! mkdir -p "$DIR" || ! chmod 0755 "$DIR"; then
  echo "$PROG: cannot create $DIR; the pull fetches the images" >&2
  exit 0
fi
# Held for the whole run: a second run (the early start and the unit) waits, then finds the
# archives. k3s-pre-pull.sh takes it shared while it imports.
if ! { exec {lock}>>"$DIR/.lock"; } 2>/dev/null || ! chmod 0644 "$DIR/.lock" || ! flock -x "$lock"; then
  echo "$PROG: cannot lock $DIR/.lock; the pull fetches the images" >&2
  exit 0
fi

# skopeo's temporary OCI layout (--tmpdir, else /var/tmp) of an unfinished earlier run.
rm -rf "$DIR/.tmp"
mkdir -p "$DIR/.tmp"
find "$DIR" -maxdepth 1 -name '.tmp-*' -delete

# The archive name of each listed image, for the clean-up below.
declare -A wanted=()
for image in "${images[@]}"; do
  [[ $image == *@sha256:* ]] && wanted["sha256-${image##*@sha256:}"]=1
done
for file in "$DIR"/sha256-*.tar "$DIR"/sha256-*.imported; do
  [[ -e $file ]] || continue
  name=${file##*/}
  name=${name%.*}
  [[ -n ${wanted[$name]:-} ]] || rm -f "$file"
done

fetch() {
  local image=$1 repo tag hex name start=$SECONDS error reason
  hex=${image##*@sha256:}
  repo=${image%@sha256:*}
  tag=""
  # A colon after the last slash separates the tag (one before it is a registry's port).
  if [[ ${repo##*/} == *:* ]]; then
    tag=${repo##*:}
    repo=${repo%:*}
  fi
  name=sha256-$hex
  # The docker transport refuses a reference with both a tag and a digest ("Docker references
  # with both a tag and digest are currently not supported": go.podman.io/image/v5
  # docker/docker_transport.go newReference), so the source is REPO@sha256:D. The archive's
  # org.opencontainers.image.ref.name is the tag (oci-archive:PATH:NAME, oci/internal
  # SplitPathAndImage; the path must have no colon), which `ctr images import --base-name REPO`
  # turns into REPO:TAG; without a tag it is the digest's file name. skopeo copies the image of
  # this platform from a multi-arch index by default (cmd/skopeo/copy.go: copy.CopySystemImage).
  # Its layers are copied unchanged, so their digests are the registry's (an OCI layout takes
  # OCI manifests only, oci/layout/oci_dest.go: a Docker schema-2 manifest and its config are
  # converted, and those small blobs come with the pull).
  if error=$("$SKOPEO" --policy "$POLICY" --tmpdir "$DIR/.tmp" --command-timeout "$COMMAND_TIMEOUT" \
    copy --quiet --retry-times "$RETRY_TIMES" \
    "docker://$repo@sha256:$hex" "oci-archive:$DIR/.tmp-$name.tar:${tag:-$name}" 2>&1 >/dev/null) &&
    chmod 0644 "$DIR/.tmp-$name.tar" && mv -f "$DIR/.tmp-$name.tar" "$DIR/$name.tar"; then
    echo "$PROG: fetched $image in $((SECONDS - start))s"
  else
    rm -f "$DIR/.tmp-$name.tar"
    # skopeo's last line: logrus's fatal `time="..." level=fatal msg="..."` (cmd/skopeo/main.go).
    reason=${error##*$'\n'}
    reason=${reason#time=\"*\" }
    echo "$PROG: could not fetch $image${reason:+ ($reason)}; the pull fetches it" >&2
  fi
}

# Concurrent, like the pre-pull: together they take about the slowest image's download. One
# download a digest (two references may name the same image).
declare -A started=()
for image in "${images[@]}"; do
  if [[ $image != *@sha256:* ]]; then
    echo "$PROG: $image has no digest; the pull fetches it" >&2
  elif [[ -n ${started[${image##*@sha256:}]:-} ]]; then
    echo "$PROG: $image is fetched with ${started[${image##*@sha256:}]}"
  elif [[ -e $DIR/sha256-${image##*@sha256:}.tar ]]; then
    echo "$PROG: $image is fetched"
  elif [[ -e $DIR/sha256-${image##*@sha256:}.imported ]]; then
    echo "$PROG: $image is imported"
  else
    started[${image##*@sha256:}]=$image
    fetch "$image" &
  fi
done
wait
rm -rf "$DIR/.tmp"
exit 0
