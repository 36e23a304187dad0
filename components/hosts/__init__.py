"""The host layer: the inventory of hosts, their rendered host documents (HostSpec, the one
host contract) and each host's NixOS lifecycle (install, secrets, build, push, roll)."""
