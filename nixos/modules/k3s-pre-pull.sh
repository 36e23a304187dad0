#!/usr/bin/env bash
# k3s-pre-pull.sh K3S IMAGE_LIST [ARCHIVE_DIR]: pull the images of IMAGE_LIST (one reference a
# line) through the CRI of the k3s containerd that k3s.service is starting, so that the CNI's pods
# find them when the node registers. Run by k3s-pre-pull.service (nixos/modules/k3s.nix) beside
# k3s. A missing image whose archive k3s-cni-fetch.sh left in ARCHIVE_DIR is imported first, so
# that its pull fetches only the manifests. The missing images are pulled concurrently (see
# below). Never fails a deploy: an image it cannot pull is left to the kubelet, which pulls it
# for its pod.
# Log: one line per image: "is present" as the list is read (list order), then, as each ends
# (completion order, so it varies between runs), "imported"/"could not import" for the images
# with an archive, and "pulled"/"could not pull" for every missing one.
# Env (tests): CRI_ENDPOINT (k3s's containerd socket), WAIT_SECONDS (600), POLL_INTERVAL (2).
set -uo pipefail

readonly K3S=$1 LIST=$2 ARCHIVE_DIR=${3:-}
readonly ENDPOINT=${CRI_ENDPOINT:-unix:///run/k3s/containerd/containerd.sock}
readonly WAIT_SECONDS=${WAIT_SECONDS:-600} POLL_INTERVAL=${POLL_INTERVAL:-2}

crictl() {
  "$K3S" crictl --runtime-endpoint "$ENDPOINT" --image-endpoint "$ENDPOINT" "$@"
}

# `k3s ctr` is containerd's ctr with k3s's socket and the CRI's k8s.io namespace as defaults
# (k3s pkg/ctr/main.go); both are given anyway (containerd cmd/ctr/app/main.go: --address takes
# a socket path, -n the namespace).
ctr() {
  "$K3S" ctr --address "${ENDPOINT#unix://}" -n k8s.io "$@"
}

# k3s starts its containerd within seconds of its own start (before the etcd join).
waited=0
until crictl info >/dev/null 2>&1; do
  if ((waited >= WAIT_SECONDS)); then
    echo "k3s-pre-pull: containerd at $ENDPOINT did not answer in ${WAIT_SECONDS}s; the kubelet pulls the images" >&2
    exit 0
  fi
  sleep "$POLL_INTERVAL"
  waited=$((waited + POLL_INTERVAL))
done

# One line for one image, whatever crictl wrote: on failure, the last line of its stderr, which
# is crictl's fatal `time="..." level=fatal msg="pulling image: ..."` (cri-tools cmd/crictl:
# image.go wraps the error, main.go logrus.Fatal), its time field dropped.
pull() {
  local image=$1 start=$SECONDS error reason
  if error=$(crictl pull "$image" 2>&1 >/dev/null); then
    echo "k3s-pre-pull: pulled $image in $((SECONDS - start))s"
  else
    reason=${error##*$'\n'}
    reason=${reason#time=\"*\" }
    echo "k3s-pre-pull: could not pull $image${reason:+ ($reason)}; the kubelet pulls it when its pod starts" >&2
  fi
}

# Concurrent PullImage calls are what containerd's CRI serves a kubelet with serializeImagePulls:
# false ("image pull requests will be sent to the image service immediately", kubernetes.io
# docs/concepts/containers/images, "Serial and parallel image pulls"). In containerd
# (internal/cri/server/images/image_pull.go) CRIImageService.PullImage takes no service-wide
# lock; a blob two images share is written once, the second writer waiting for the first's
# ingest (core/content/helpers.go OpenWriter). containerd caps layer downloads at
# max_concurrent_downloads (3 by default), per pull or, in its transfer service and newer CRI
# image services, for all pulls together (one semaphore: core/transfer/local
# NewTransferService, images/service.go downloadLimiter). So the pulls together take at least
# the slowest image's pull, and more only where that cap or the link is the bottleneck.
missing=()
while IFS= read -r image; do
  [[ -n $image ]] || continue
  if crictl inspecti "$image" >/dev/null 2>&1; then
    echo "k3s-pre-pull: $image is present"
    continue
  fi
  missing+=("$image")
done <"$LIST"

# The images' blobs, downloaded before k3s ran (k3s-cni-fetch.sh: ARCHIVE_DIR/sha256-<hex>.tar,
# an OCI archive whose ref.name is the tag). `ctr images import --base-name REPO` stores them in
# the content store under the image REPO:TAG, which keeps them from the garbage collector
# (containerd cmd/ctr/commands/images/import.go, through the transfer service;
# core/transfer/image/imagestore.go WithNamedPrefix; core/images/archive/reference.go
# refTranslator joins base name and tag). --no-unpack: the pull unpacks them with the CRI's own
# snapshotter. The pull below then finds the layers in the content store: a blob the namespace
# has fails its content writer with AlreadyExists (core/metadata/content.go
# contentStore.Writer), which the fetch handlers take as done (core/remotes/handlers.go
# FetchHandler; core/transfer/local/pull.go fetchHandler), so only the index and manifest (and a
# config skopeo converted) come from the registry. The fetch holds DIR/.lock while it downloads:
# wait (bounded) for a running one to end, and hold it shared while importing, so that no fetch
# removes an archive being read. After an import the marker sha256-<hex>.imported tells the fetch
# that this containerd has the image (not in a container: its bind of the directory is
# read-only).
import_archive() {
  local image=$1 archive=$2 repo start=$SECONDS error
  repo=${image%@sha256:*}
  [[ ${repo##*/} == *:* ]] && repo=${repo%:*}
  if error=$(ctr images import --base-name "$repo" --no-unpack "$archive" 2>&1 >/dev/null); then
    echo "k3s-pre-pull: imported $image in $((SECONDS - start))s"
    if [[ -w $ARCHIVE_DIR ]]; then
      : >"${archive%.tar}.imported" && chmod 0644 "${archive%.tar}.imported"
    fi
  else
    error=${error##*$'\n'}
    echo "k3s-pre-pull: could not import $archive${error:+ ($error)}; pulling $image in full" >&2
  fi
}

import_archives() {
  local lock image archive
  [[ -n $ARCHIVE_DIR && -e $ARCHIVE_DIR/.lock ]] || return 0
  exec {lock}<"$ARCHIVE_DIR/.lock" || return 0
  if ! flock -s -w "$WAIT_SECONDS" "$lock"; then
    echo "k3s-pre-pull: a fetch held $ARCHIVE_DIR/.lock for ${WAIT_SECONDS}s; pulling without its archives" >&2
    exec {lock}<&-
    return 0
  fi
  for image in "${missing[@]}"; do
    [[ $image == *@sha256:* ]] || continue
    archive=$ARCHIVE_DIR/sha256-${image##*@sha256:}.tar
    [[ -f $archive ]] && import_archive "$image" "$archive" &
  done
  wait
  exec {lock}<&-
}
import_archives

for image in "${missing[@]}"; do
  pull "$image" &
done
wait
exit 0
