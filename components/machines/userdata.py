"""Hetzner user data that gives a new server a known SSH host key.

Standard library only: components/scripts/hcloud-image.py imports it too (for its image builder),
and that script runs with the operator's plain python3.
"""

from __future__ import annotations


def host_key_user_data(private_openssh: str, public_openssh: str) -> str:
    """cloud-init user data that gives a new server a known ed25519 host key, so its first SSH
    contact already pins a key. On the stock image cloud-init applies it (cc_ssh:
    `ssh_deletekeys` drops the image's own keys, `ssh_keys` writes ours and no other is made); the
    kexec installer nixos-anywhere boots keeps the stock image's host keys, so the same key pins
    both phases. The NixOS image has no cloud-init: nixos/modules/hetzner-host-key.nix reads the
    same `ssh_keys` from the metadata service at first boot.

    Built only from the state-held key: the same key gives the same bytes. Servers ignore later
    changes of their user data (`ignore_changes`): it only matters when a server is created."""
    public = public_openssh.strip()
    if "\n" in public or not public.startswith("ssh-ed25519 "):
        raise ValueError("the host key must be one 'ssh-ed25519 ...' line")
    private = "".join(f"    {line}\n" for line in private_openssh.strip().splitlines())
    return (
        "#cloud-config\n"
        "ssh_deletekeys: true\n"
        "ssh_keys:\n"
        "  ed25519_private: |\n"
        f"{private}"
        f"  ed25519_public: {public}\n"
    )
