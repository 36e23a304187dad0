#!/usr/bin/env bash
# k3s-pre-pull.sh K3S IMAGE_LIST: pull the images of IMAGE_LIST (one reference a line) through
# the CRI of the k3s containerd that k3s.service is starting, so that the CNI's pods find them
# when the node registers. Run by k3s-pre-pull.service (nixos/modules/k3s.nix) beside k3s.
# The missing images are pulled concurrently (see below). Never fails a deploy: an image it
# cannot pull is left to the kubelet, which pulls it for its pod.
# Log: one line per image: "is present" as the list is read (list order), "pulled"/"could not
# pull" as each pull ends (completion order, so it varies between runs).
# Env (tests): CRI_ENDPOINT (k3s's containerd socket), WAIT_SECONDS (600), POLL_INTERVAL (2).
set -uo pipefail

readonly K3S=$1 LIST=$2
readonly ENDPOINT=${CRI_ENDPOINT:-unix:///run/k3s/containerd/containerd.sock}
readonly WAIT_SECONDS=${WAIT_SECONDS:-600} POLL_INTERVAL=${POLL_INTERVAL:-2}

crictl() {
  "$K3S" crictl --runtime-endpoint "$ENDPOINT" --image-endpoint "$ENDPOINT" "$@"
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
while IFS= read -r image; do
  [[ -n $image ]] || continue
  if crictl inspecti "$image" >/dev/null 2>&1; then
    echo "k3s-pre-pull: $image is present"
    continue
  fi
  pull "$image" &
done <"$LIST"
wait
exit 0
