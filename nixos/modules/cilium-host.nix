# Host prerequisites for Cilium (kernel modules and sysctls); Cilium itself is installed with Helm.
{ config, lib, ... }:
let
  cfg = config.nixosK3s.ciliumHost;
  # nixpkgs sets some of these keys itself with mkDefault (e.g. the fs.inotify limits), and a
  # sysctl key takes exactly one definition at the winning priority: 900 outranks nixpkgs'
  # defaults and still yields to a host's plain definition.
  preferred = lib.mkOverride 900;
in
{
  options.nixosK3s.ciliumHost = {
    enable = lib.mkEnableOption "the kernel modules and sysctls Cilium and the kubelet need";
  };

  config = lib.mkIf cfg.enable {
    boot.kernelModules = [
      "br_netfilter"
      "nf_conntrack"
      "overlay"
      "ip_tables"
      "ip6_tables"
      "ip6table_mangle"
      "ip6table_raw"
      "ip6table_filter"
      "iptable_mangle"
      "iptable_raw"
      "xt_socket"
    ];

    boot.kernel.sysctl = {
      "net.ipv4.ip_forward" = preferred 1;
      "net.ipv6.conf.all.forwarding" = preferred 1;
      "net.ipv6.conf.default.forwarding" = preferred 1;
      "net.bridge.bridge-nf-call-iptables" = preferred 1;
      "net.bridge.bridge-nf-call-ip6tables" = preferred 1;
      # Cilium's endpoints answer for addresses routed elsewhere; strict rp_filter drops that.
      "net.ipv4.conf.lxc*.rp_filter" = preferred 0;
      "vm.overcommit_memory" = preferred 1;
      # Reboot on panic instead of hanging: the cluster reschedules, a hung node helps nobody.
      "kernel.panic" = preferred 10;
      "kernel.panic_on_oops" = preferred 1;
      "fs.inotify.max_user_instances" = preferred 524288;
      "fs.inotify.max_user_watches" = preferred 524288;
    };
  };
}
