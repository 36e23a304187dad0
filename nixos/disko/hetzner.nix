# Disk layout for Hetzner Cloud: GPT with ESP (plus BIOS boot on x86) and one ext4 root, on the disk from host data.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.nixosK3s.disk;
  # x86 servers boot BIOS or UEFI, arm64 (cax) only UEFI. disko adds the disk to
  # boot.loader.grub.devices for an EF02 partition, and GRUB's installer refuses a BIOS device
  # on arm64 (no i386-pc target), so the BIOS boot partition exists on x86 only.
  biosBoot = pkgs.stdenv.hostPlatform.isx86;
in
{
  options.nixosK3s.disk = {
    device = lib.mkOption {
      type = lib.types.nullOr (lib.types.strMatching "/dev/.+");
      example = "/dev/sda";
      description = "Whole disk that nixos-anywhere wipes and partitions; null disables the layout.";
    };
  };

  config = lib.mkIf (cfg.device != null) {
    disko.devices.disk.main = {
      type = "disk";
      inherit (cfg) device;
      content = {
        type = "gpt";
        partitions = lib.optionalAttrs biosBoot {
          boot = {
            size = "1M";
            type = "EF02";
            priority = 1;
          };
        }
        // (import ./esp-and-root.nix);
      };
    };
  };
}
