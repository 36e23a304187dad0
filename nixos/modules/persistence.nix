# State that must survive reboots (k3s, kubelet): asserts it is not on a tmpfs and creates the paths.
{ config, lib, ... }:
let
  cfg = config.nixosK3s.persistence;
  # The mount that holds `path`: the longest mount point that is a prefix of it.
  isUnder = mountPoint: path: mountPoint == "/" || path == mountPoint || lib.hasPrefix "${mountPoint}/" path;
  onTmpfs =
    path:
    let
      holders = lib.filter (fs: isUnder fs.mountPoint path) (lib.attrValues config.fileSystems);
      deepest = lib.foldl' (
        best: fs: if best == null || lib.stringLength fs.mountPoint > lib.stringLength best.mountPoint then fs else best
      ) null holders;
    in
    deepest != null && deepest.fsType == "tmpfs";
in
{
  options.nixosK3s.persistence = {
    enable = lib.mkEnableOption "checks that k3s state lives on persistent storage";

    paths = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      description = ''
        Directories whose loss resets the node (etcd data, certificates, kubelet state). On a
        normal disk they persist as they are; a tmpfs under them fails evaluation.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = map (path: {
      assertion = !(onTmpfs path);
      message = "nixosK3s.persistence: ${path} would be on a tmpfs and lost on reboot.";
    }) cfg.paths;

    # Create missing directories only ("d" with "-" mode and owner leaves existing ones alone).
    systemd.tmpfiles.settings."10-nixos-k3s-persistence" = lib.genAttrs cfg.paths (_: {
      d = {
        mode = "-";
        user = "-";
        group = "-";
      };
    });
  };
}
