# Grow the root partition and its ext4 filesystem to the whole disk (servers booted from the smaller NixOS image).
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.nixosK3s.hetznerGrowRoot;
in
{
  options.nixosK3s.hetznerGrowRoot = {
    enable = lib.mkEnableOption ''
      growing the root partition (the last of the disk layout) and its ext4 filesystem online
      to the whole disk at boot. A server booted from the NixOS image has a disk at least as
      large as the image builder's (40 GB), often larger. A no-op once the partition fills
      the disk
    '';

    partLabel = lib.mkOption {
      type = lib.types.str;
      default = "disk-main-root";
      description = "GPT partition label of the root partition (disko: disk-<disk>-<partition>).";
    };
  };

  config = lib.mkIf cfg.enable {
    systemd.services.nixos-k3s-grow-root = {
      description = "Grow the root partition and filesystem to the whole disk";
      wantedBy = [ "multi-user.target" ];
      after = [ "local-fs.target" ];
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
      };
      path = [
        pkgs.cloud-utils.guest
        pkgs.coreutils
        pkgs.e2fsprogs
        pkgs.gawk
        pkgs.gnused
        pkgs.util-linux
      ];
      script = ''
        set -euo pipefail
        part=$(readlink -f /dev/disk/by-partlabel/${lib.escapeShellArg cfg.partLabel})
        disk=/dev/$(lsblk -no pkname "$part")
        number=$(cat "/sys/class/block/$(basename "$part")/partition")
        # growpart exits 1 with NOCHANGE when the partition already fills the disk.
        status=0
        out=$(growpart "$disk" "$number" 2>&1) || status=$?
        printf '%s\n' "$out"
        if [ "$status" -ne 0 ] && ! printf '%s' "$out" | grep -q NOCHANGE; then
          exit "$status"
        fi
        resize2fs "$part"
      '';
    };
  };
}
