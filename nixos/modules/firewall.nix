# Host firewall: few public ports, inter-node ports only on the private interface, CNI devices trusted.
{ config, lib, ... }:
let
  cfg = config.nixosK3s.firewall;
  portRange = lib.types.submodule {
    options = {
      from = lib.mkOption {
        type = lib.types.port;
        description = "First port.";
      };
      to = lib.mkOption {
        type = lib.types.port;
        description = "Last port (inclusive).";
      };
    };
  };
in
{
  options.nixosK3s.firewall = {
    enable = lib.mkEnableOption "the nixos-k3s host firewall";

    publicTcpPorts = lib.mkOption {
      type = lib.types.listOf lib.types.port;
      default = [ 22 ];
      description = "TCP ports open on every interface (SSH, the API if it is public, ingress).";
    };

    publicUdpPorts = lib.mkOption {
      type = lib.types.listOf lib.types.port;
      default = [ ];
      description = "UDP ports open on every interface.";
    };

    privateInterface = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      description = "Interface of the cluster network; null opens no private ports.";
    };

    privateTcpPorts = lib.mkOption {
      type = lib.types.listOf lib.types.port;
      default = [ ];
      description = "TCP ports open only on privateInterface.";
    };

    privateTcpPortRanges = lib.mkOption {
      type = lib.types.listOf portRange;
      default = [ ];
      description = "TCP port ranges open only on privateInterface.";
    };

    privateUdpPorts = lib.mkOption {
      type = lib.types.listOf lib.types.port;
      default = [ ];
      description = "UDP ports open only on privateInterface.";
    };

    trustedInterfaces = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      default = [ ];
      description = "Interfaces whose traffic is accepted without filtering (CNI devices).";
    };

    checkReversePath = lib.mkOption {
      type = lib.types.enum [
        "strict"
        "loose"
        "off"
      ];
      default = "loose";
      description = "Reverse path filter; Cilium's routing breaks with strict.";
    };
  };

  config = lib.mkIf cfg.enable {
    networking.firewall = {
      enable = true;
      allowedTCPPorts = cfg.publicTcpPorts;
      allowedUDPPorts = cfg.publicUdpPorts;
      inherit (cfg) trustedInterfaces;
      checkReversePath = if cfg.checkReversePath == "off" then false else cfg.checkReversePath;
      interfaces = lib.optionalAttrs (cfg.privateInterface != null) {
        ${cfg.privateInterface} = {
          allowedTCPPorts = cfg.privateTcpPorts;
          allowedTCPPortRanges = cfg.privateTcpPortRanges;
          allowedUDPPorts = cfg.privateUdpPorts;
        };
      };
    };
  };
}
