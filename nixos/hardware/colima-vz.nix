# Colima dev VM (Lima on Apple's Virtualization.framework, aarch64): EFI boot, disk layout, NICs, Rosetta.
#
# Lima's vz driver (pkg/driver/vz/vm_darwin.go) attaches the VM disk as the first virtio-blk
# device (/dev/vda) and the cidata ISO last, boots it with EFI, gives it a virtio console (hvc0),
# a first NIC on Lima's user network (eth0, 192.168.5.15) and, with `colima start
# --network-address`, a vzNAT NIC that Colima names col0 and reads its address from. With
# --vz-rosetta Lima shares Rosetta over virtiofs with the tag "vz-rosetta"
# (pkg/driver/vz/rosetta_directory_share_arm64.go).
{
  config,
  lib,
  host,
  inputs,
  ...
}:
let
  diskDevice = host.hardware.diskDevice;
  inherit (host.hardware) rosetta;
  # Colima's limautil.NetInterface: `colima ls` shows the IPv4 address of this NIC.
  colimaInterface = "col0";
in
{
  # configuration.nix imports disko only for hetzner-cloud; this profile brings its own layout.
  imports = [
    inputs.disko.nixosModules.disko
    ../modules/lima-guest.nix
  ];

  assertions = [
    {
      assertion = host.system == "aarch64-linux";
      message = "host.system is ${host.system}, but hardware profile colima-vz needs aarch64-linux: Virtualization.framework boots only aarch64 guests (set host.hardware.rosetta to run x86_64 binaries).";
    }
    {
      assertion = host.network.privateInterface == colimaInterface;
      message = "host.network.privateInterface is ${host.network.privateInterface}, but hardware profile colima-vz needs ${colimaInterface}: Colima's reachable NIC, the one that carries the node address.";
    }
    {
      assertion = (config.nixosK3s.disk.device or null) == null;
      message = "nixosK3s.disk.device (the Hetzner disk layout) must stay null with hardware profile colima-vz, which brings its own layout for ${diskDevice}.";
    }
  ];

  nixosK3s.limaGuest.enable = true;

  boot.initrd.availableKernelModules = [
    "virtio_pci"
    "virtio_blk"
    "virtio_net"
    "virtio_console"
    "xhci_pci"
    "usb_storage"
  ];
  # Lima's host agent reaches lima-guestagent over vsock.
  boot.kernelModules = [ "vmw_vsock_virtio_transport" ];
  # Lima records hvc0 in serialv.log: the only console of a headless vz VM.
  boot.kernelParams = [ "console=hvc0" ];

  # vz boots EFI only. Lima keeps the firmware variables of the Ubuntu install, whose boot entry
  # points at a partition disko removes, so boot the removable path (EFI/BOOT/BOOTAA64.EFI), which
  # bootctl always installs, instead of writing variables from the installer.
  boot.loader.systemd-boot.enable = true;
  boot.loader.efi.canTouchEfiVariables = false;

  disko.devices.disk.main = {
    type = "disk";
    device = diskDevice;
    content = {
      type = "gpt";
      partitions = import ../disko/esp-and-root.nix;
    };
  };

  networking.useDHCP = false;
  networking.useNetworkd = true;
  systemd.network.enable = true;
  # lima-nic-names gives the NICs these names before networkd starts. DHCP client id = MAC, like
  # Lima's netplan (dhcp-identifier: mac), so macOS's DHCP server hands NixOS the address Ubuntu
  # had and the address Pulumi recorded stays valid. Route metrics as Lima (200) and Colima (300)
  # set them: the default route goes through Lima's user network.
  systemd.network.networks."10-lima-eth0" = {
    matchConfig.Name = "eth0";
    networkConfig = {
      DHCP = "ipv4";
      IPv6AcceptRA = false;
    };
    dhcpV4Config = {
      ClientIdentifier = "mac";
      RouteMetric = 200;
    };
    linkConfig.RequiredForOnline = "routable";
  };
  systemd.network.networks."10-lima-${colimaInterface}" = {
    matchConfig.Name = colimaInterface;
    networkConfig = {
      DHCP = "ipv4";
      IPv6AcceptRA = false;
    };
    dhcpV4Config = {
      ClientIdentifier = "mac";
      RouteMetric = 300;
    };
    linkConfig = {
      MTUBytes = toString (host.network.mtu or 1500);
      RequiredForOnline = "routable";
    };
  };

  virtualisation.rosetta = lib.mkIf rosetta {
    enable = true;
    mountTag = "vz-rosetta";
  };
  # Rosetta is shared only when Colima started with --vz-rosetta; without it, boot anyway.
  fileSystems = lib.mkIf rosetta { "/run/rosetta".options = [ "nofail" ]; };
}
