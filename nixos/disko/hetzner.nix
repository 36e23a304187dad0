# Disk layout for Hetzner Cloud: hybrid GPT (BIOS boot + ESP) and one ext4 root, on the disk from host data.
{ config, lib, ... }:
let
  cfg = config.nixosK3s.disk;
in
{
  options.nixosK3s.disk = {
    device = lib.mkOption {
      type = lib.types.nullOr (lib.types.strMatching "/dev/.+");
      default = null;
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
        partitions = {
          boot = {
            size = "1M";
            type = "EF02";
            priority = 1;
          };
          ESP = {
            size = "512M";
            type = "EF00";
            content = {
              type = "filesystem";
              format = "vfat";
              mountpoint = "/boot";
              mountOptions = [ "umask=0077" ];
            };
          };
          root = {
            size = "100%";
            content = {
              type = "filesystem";
              format = "ext4";
              mountpoint = "/";
            };
          };
        };
      };
    };
  };
}
