# The cluster's private network NIC: named by MAC, static /32 address and on-link routes via the gateway.
{ config, lib, ... }:
let
  cfg = config.nixosK3s.privateNetwork;
in
{
  options.nixosK3s.privateNetwork = {
    enable = lib.mkEnableOption "static configuration of the private network NIC (Hetzner networks)";

    interface = lib.mkOption {
      type = lib.types.strMatching "[a-z][a-z0-9]{0,14}";
      description = "Kernel name of the private NIC; firewall rules refer to it.";
    };

    macAddress = lib.mkOption {
      type = lib.types.nullOr (lib.types.strMatching "([0-9a-f]{2}:){5}[0-9a-f]{2}");
      description = ''
        MAC of the private NIC. Set: a .link file gives the NIC the name `interface`, so the name
        does not depend on PCI slot order. Null: `interface` must already be the kernel name.
      '';
    };

    address = lib.mkOption {
      type = lib.types.str;
      description = "This host's IPv4 address on the network.";
    };

    cidr = lib.mkOption {
      type = lib.types.str;
      example = "10.0.0.0/16";
      description = "Range routed over the NIC (the whole network, not only this host's subnet).";
    };

    extraRoutes = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      example = [ "10.250.0.0/16" ];
      description = ''
        Further ranges sent to the gateway, e.g. the nspawn containers' addresses, which Hetzner
        network routes deliver to the host carrying them. Without this, traffic to them would
        leave through the public default route.
      '';
    };

    gateway = lib.mkOption {
      type = lib.types.str;
      example = "10.0.0.1";
      description = "Network gateway: Hetzner routes all private traffic through the first address.";
    };

    mtu = lib.mkOption {
      type = lib.types.ints.between 1280 9000;
      description = "MTU of the NIC (Hetzner private networks: 1450).";
    };
  };

  config = lib.mkIf cfg.enable {
    systemd.network.links = lib.mkIf (cfg.macAddress != null) {
      "10-nixos-k3s-private" = {
        matchConfig.MACAddress = cfg.macAddress;
        linkConfig.Name = cfg.interface;
      };
    };

    # Hetzner hands out a /32 and routes everything via the gateway, as its DHCP would.
    systemd.network.networks."10-private" = {
      matchConfig.Name = cfg.interface;
      address = [ "${cfg.address}/32" ];
      routes = [
        {
          Destination = "${cfg.gateway}/32";
          Scope = "link";
        }
      ]
      ++ map (destination: {
        Destination = destination;
        Gateway = cfg.gateway;
        GatewayOnLink = true;
      }) ([ cfg.cidr ] ++ cfg.extraRoutes);
      networkConfig = {
        DHCP = "no";
        IPv6AcceptRA = false;
        LinkLocalAddressing = "no";
      };
      linkConfig = {
        MTUBytes = toString cfg.mtu;
        RequiredForOnline = "routable";
      };
    };
  };
}
