"""The machine layers: Hetzner Cloud servers (and the NixOS image) and Colima VMs; each
returns a MachineView per host for the NixOS layer."""
