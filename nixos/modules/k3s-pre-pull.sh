#!/usr/bin/env bash
# k3s-pre-pull.sh K3S IMAGE_LIST: pull the images of IMAGE_LIST (one reference a line) through
# the CRI of the k3s containerd that k3s.service is starting, so that the CNI's pods find them
# when the node registers. Run by k3s-pre-pull.service (nixos/modules/k3s.nix) beside k3s.
# Never fails a deploy: an image it cannot pull is left to the kubelet, which pulls it for its pod.
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

while IFS= read -r image; do
  [[ -n $image ]] || continue
  if crictl inspecti "$image" >/dev/null 2>&1; then
    echo "k3s-pre-pull: $image is present"
    continue
  fi
  start=$SECONDS
  if crictl pull "$image" >/dev/null; then
    echo "k3s-pre-pull: pulled $image in $((SECONDS - start))s"
  else
    echo "k3s-pre-pull: could not pull $image; the kubelet pulls it when its pod starts" >&2
  fi
done <"$LIST"
exit 0
