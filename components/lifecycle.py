"""What `pulumi destroy` relies on for command resources that have no delete step.

A command resource that changes something outside Pulumi either has a `delete` command or is
listed here by the suffix of its name with the reason deletion of something else covers it.
The reliability tests enumerate every command resource of a plan against this table.
"""

from __future__ import annotations

COVERED_WITHOUT_DELETE: dict[str, str] = {
    "-install": "writes only to its own machine's disk; deleting the server or VM removes it",
    "-secrets": "writes 0600 files on its own machine only; they go with the machine",
    "-wake": "starts its own VM only (idempotent create); the VM's -vm resource deletes it",
    "-build": "uploads and builds a configuration on its own machine only; goes with it",
    "-push": "uploads and activates a configuration on its own machine only; goes with it",
    "-api-ready": "read-only check of the API, changes nothing",
    "-kubeconfig": "reads k3s.yaml, changes nothing (the output lives only in Pulumi state)",
    "-nodes-ready": "read-only check of node status, changes nothing",
    "-roll": "a rolling-upgrade step (drain, push, uncordon) of its own node: goes with it",
}


def coverage_reason(name: str) -> str | None:
    """The reason a command named `name` needs no delete step, or None."""
    for suffix, reason in COVERED_WITHOUT_DELETE.items():
        if name.endswith(suffix):
            return reason
    return None
