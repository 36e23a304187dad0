# Tailscale on the host, and tailscale on the k3s PATH for k3s's --vpn-auth-file integration.
{ config, lib, ... }:
let
  cfg = config.nixosK3s.tailscale;
in
{
  options.nixosK3s.tailscale = {
    enable = lib.mkEnableOption "tailscaled";

    authKeyFile = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      description = ''
        0600 file holding a raw tailscale auth key; tailscaled's autoconnect joins the tailnet
        with it. Leave null when k3s joins through nixosK3s.k3s.vpnAuthFile instead.
      '';
    };

    wrapK3s = lib.mkOption {
      type = lib.types.bool;
      description = ''
        Put the tailscale CLI on the k3s PATH (k3s runs `tailscale up` for --vpn-auth-file).
        Wraps only the k3s package the service runs; nixpkgs is not overlaid.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    services.tailscale = {
      enable = true;
      openFirewall = true;
      authKeyFile = cfg.authKeyFile;
    };
    nixosK3s.k3s.runtimePackages = lib.mkIf cfg.wrapK3s [ config.services.tailscale.package ];
  };
}
