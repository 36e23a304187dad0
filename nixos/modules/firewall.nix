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

  # Every port the host may open, with the reason it is open: one data file, from which
  # components/hosts/render.py chooses the ports by role and CNI (it alone sees the stack). A port
  # without an entry there is refused here, so none is opened without a reason.
  known = lib.importJSON ./firewall-ports.json;
  reasonsOf = entries: lib.mapAttrs' (_: e: lib.nameValuePair (toString e.port) e.reason) entries;
  reasons = {
    tcp = reasonsOf known.tcp;
    udp = reasonsOf known.udp;
    tcpRanges = lib.mapAttrs' (
      _: e: lib.nameValuePair "${toString e.start}-${toString e.end}" e.reason
    ) known.tcpRanges;
  };
  unexplained =
    map (p: "TCP ${toString p}") (
      builtins.filter (p: !(reasons.tcp ? ${toString p})) (cfg.publicTcpPorts ++ cfg.privateTcpPorts)
    )
    ++ map (p: "UDP ${toString p}") (
      builtins.filter (p: !(reasons.udp ? ${toString p})) (cfg.publicUdpPorts ++ cfg.privateUdpPorts)
    )
    ++ map (r: "TCP ${toString r.from}-${toString r.to}") (
      builtins.filter (r: !(reasons.tcpRanges ? "${toString r.from}-${toString r.to}")) cfg.privateTcpPortRanges
    );
in
{
  options.nixosK3s.firewall = {
    enable = lib.mkEnableOption "the nixos-k3s host firewall";

    publicTcpPorts = lib.mkOption {
      type = lib.types.listOf lib.types.port;
      description = "TCP ports open on every interface (SSH, the API if it is public, ingress).";
    };

    publicUdpPorts = lib.mkOption {
      type = lib.types.listOf lib.types.port;
      description = "UDP ports open on every interface.";
    };

    privateInterface = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      description = "Interface of the cluster network; null opens no private ports.";
    };

    privateTcpPorts = lib.mkOption {
      type = lib.types.listOf lib.types.port;
      description = "TCP ports open only on privateInterface.";
    };

    privateTcpPortRanges = lib.mkOption {
      type = lib.types.listOf portRange;
      description = "TCP port ranges open only on privateInterface.";
    };

    privateUdpPorts = lib.mkOption {
      type = lib.types.listOf lib.types.port;
      description = "UDP ports open only on privateInterface.";
    };

    trustedInterfaces = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      description = "Interfaces whose traffic is accepted without filtering (CNI devices).";
    };

    checkReversePath = lib.mkOption {
      type = lib.types.enum [
        "strict"
        "loose"
        "off"
      ];
      description = "Reverse path filter; Cilium's routing breaks with strict.";
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = unexplained == [ ];
        message = "nixosK3s.firewall: no reason is known for opening ${lib.concatStringsSep ", " unexplained} (nixos/modules/firewall-ports.json lists the ports and why).";
      }
    ];

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
