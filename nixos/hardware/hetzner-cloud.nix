# Hetzner Cloud VM (x86_64 and aarch64): virtio guest, GRUB BIOS+EFI, DHCPv4 and static IPv6 on the public NIC.
{
  config,
  lib,
  modulesPath,
  pkgs,
  ...
}:
let
  cfg = config.nixosK3s.hetznerCloud;
in
{
  imports = [ (modulesPath + "/profiles/qemu-guest.nix") ];

  options.nixosK3s.hetznerCloud = {
    enable = lib.mkEnableOption "the Hetzner Cloud machine layer";

    publicIpv6 = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      example = "2a01:4f8:1c1c:1234::1";
      description = ''
        The server's public IPv6 address (one address of its /64). Hetzner sends no router
        advertisements, so it is configured statically with gateway fe80::1.
      '';
    };

    publicIpv6PrefixLength = lib.mkOption {
      type = lib.types.ints.between 1 128;
      description = "Prefix length of publicIpv6.";
    };
  };

  config = lib.mkIf cfg.enable {
    boot.initrd.availableKernelModules = [
      "ahci"
      "xhci_pci"
      "virtio_pci"
      "virtio_scsi"
      "sd_mod"
      "sr_mod"
    ];

    # x86 servers boot BIOS or UEFI depending on the type: GRUB goes in both ways, and disko adds
    # the disk to boot.loader.grub.devices for the layout's EF02 partition. arm64 (cax) boots
    # UEFI only: "nodev" installs the EFI GRUB alone (the layout has no EF02 partition there).
    boot.loader.grub = {
      enable = true;
      efiSupport = true;
      efiInstallAsRemovable = true;
      devices = lib.mkIf (!pkgs.stdenv.hostPlatform.isx86) [ "nodev" ];
    };

    services.qemuGuest.enable = true;

    networking.useDHCP = false;
    networking.useNetworkd = true;
    systemd.network.enable = true;
    # The private NIC is matched by an earlier, more specific file (see private-network.nix).
    systemd.network.networks."20-public" = {
      matchConfig.Name = "en* eth*";
      networkConfig = {
        DHCP = "ipv4";
        IPv6AcceptRA = false;
      };
      address = lib.optional (
        cfg.publicIpv6 != null
      ) "${cfg.publicIpv6}/${toString cfg.publicIpv6PrefixLength}";
      routes = lib.optional (cfg.publicIpv6 != null) { Gateway = "fe80::1"; };
      linkConfig.RequiredForOnline = "routable";
    };
  };
}
