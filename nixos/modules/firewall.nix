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

  # Every port the host opens, with the reason it is open. The host data chooses the ports by
  # role and CNI (components/render.py); a port without an entry here is refused, so none is
  # opened without a reason.
  reasons = {
    tcp = {
      "22" = "SSH: deploys and operators (the Hetzner firewall narrows the sources)";
      "80" = "ingress HTTP (firewall.ingress)";
      "443" = "ingress HTTPS (firewall.ingress)";
      "6443" = "servers only: Kubernetes API and k3s supervisor (agents, joining servers, load balancer)";
      "10250" = "kubelet API: logs, exec and metrics from the API server";
      "4240" = "Cilium health checks between nodes";
      "4244" = "Hubble server on every node, read by hubble-relay";
    };
    tcpRanges = {
      "2379-2380" = "servers only: embedded etcd client and peer traffic between servers";
    };
    udp = {
      "8472" = "VXLAN overlay between nodes (Cilium tunnel or k3s flannel)";
      "6081" = "Geneve overlay between nodes (Cilium tunnel)";
    };
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
    assertions = [
      {
        assertion = unexplained == [ ];
        message = "nixosK3s.firewall: no reason is known for opening ${lib.concatStringsSep ", " unexplained} (nixos/modules/firewall.nix lists the ports and why).";
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
