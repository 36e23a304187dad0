# Entry module: validates the host JSON, imports the nixos-k3s modules and hands them its sections.
{
  lib,
  pkgs,
  host,
  inputs,
  ...
}:
let
  errors = import ./lib/host-check.nix {
    schema = lib.importJSON ./host.schema.json;
    inherit host;
  };
  # Every read of host data goes through `h`, so bad data stops here, naming the field,
  # before any nixpkgs module sees it.
  h =
    if errors == [ ] then
      host
    else
      throw "nixos-k3s: invalid host data for ${toString (host.name or "?")}:\n  ${lib.concatStringsSep "\n  " errors}";

  profileModules = {
    hetzner-cloud = [
      inputs.disko.nixosModules.disko
      ./hardware/hetzner-cloud.nix
      ./disko/hetzner.nix
      ./modules/hetzner-host-key.nix
      ./modules/hetzner-grow-root.nix
    ];
    colima-vz = [ ./hardware/colima-vz.nix ];
  };

  net = h.network;
  portRange = range: {
    from = range.start;
    to = range.end;
  };
in
{
  imports = [
    ./modules/base.nix
    ./modules/private-network.nix
    ./modules/firewall.nix
    ./modules/cilium-host.nix
    ./modules/k3s.nix
    ./modules/tailscale.nix
    ./modules/persistence.nix
    ./modules/k3s-containers.nix
  ]
  ++ profileModules.${h.hardware.profile};

  config = lib.mkMerge [
    {
      nixpkgs.hostPlatform = h.system;
      system.stateVersion = h.stateVersion;

      nixosK3s.base = {
        enable = true;
        hostName = h.name;
        rootAuthorizedKeys = h.ssh.authorizedKeys;
        adminUsers = h.ssh.adminUsers;
      };

      nixosK3s.privateNetwork = {
        enable = net.privateGateway != null;
        interface = net.privateInterface;
        macAddress = net.privateMacAddress;
        address = net.privateIpv4;
        cidr = net.privateCidr;
        extraRoutes = net.routedCidrs;
        gateway = if net.privateGateway != null then net.privateGateway else "";
        inherit (net) mtu;
      };

      # Whole sections of the host document: a field the module does not declare fails the
      # evaluation, so the document and the options cannot drift apart.
      nixosK3s.firewall = h.firewall // {
        enable = true;
        privateInterface = net.privateInterface;
        privateTcpPortRanges = map portRange h.firewall.privateTcpPortRanges;
      };

      nixosK3s.ciliumHost.enable = h.cilium.hostPrerequisites;

      nixosK3s.k3s = h.k3s // {
        package = pkgs.${h.k3s.package};
        nodeName = h.name;
        # Installed with the final system, k3s waits for the deploy's go (host-activate.sh).
        holdUntil = "/var/lib/nixos-k3s/k3s-released";
      };

      nixosK3s.tailscale = h.tailscale;

      nixosK3s.persistence = h.persistence // {
        enable = true;
      };

      nixosK3s.k3sContainers = {
        enable = h.containers != [ ];
        package = h.k3s.package;
        tunnelUdpPorts = h.firewall.privateUdpPorts;
        inherit (h.firewall) trustedInterfaces;
        nodeTcpPorts = h.firewall.privateTcpPorts;
        containers = lib.listToAttrs (
          map (c: {
            inherit (c) name;
            value = removeAttrs c [ "name" ];
          }) h.containers
        );
      };
    }

    # optionalAttrs, not mkIf: these options exist only when the profile's modules are imported.
    (lib.optionalAttrs (h.hardware.profile == "hetzner-cloud") {
      nixosK3s.hetznerCloud = {
        enable = true;
        publicIpv6 = net.publicIpv6;
        publicIpv6PrefixLength = net.publicIpv6PrefixLength;
      };
      nixosK3s.disk.device = h.hardware.diskDevice;
      # No-op once the host has a key; installs it at the first boot from the NixOS image.
      nixosK3s.hetznerHostKey.enable = true;
      nixosK3s.hetznerGrowRoot.enable = true;
    })
  ];
}
