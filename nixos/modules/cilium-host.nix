# Host prerequisites for Cilium (kernel modules and sysctls); Cilium itself is installed with Helm.
{ config, lib, ... }:
let
  cfg = config.nixosK3s.ciliumHost;
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
      "net.ipv4.ip_forward" = lib.mkDefault 1;
      "net.ipv6.conf.all.forwarding" = lib.mkDefault 1;
      "net.ipv6.conf.default.forwarding" = lib.mkDefault 1;
      "net.bridge.bridge-nf-call-iptables" = lib.mkDefault 1;
      "net.bridge.bridge-nf-call-ip6tables" = lib.mkDefault 1;
      # Cilium's endpoints answer for addresses routed elsewhere; strict rp_filter drops that.
      "net.ipv4.conf.lxc*.rp_filter" = lib.mkDefault 0;
      "vm.overcommit_memory" = lib.mkDefault 1;
      # Reboot on panic instead of hanging: the cluster reschedules, a hung node helps nobody.
      "kernel.panic" = lib.mkDefault 10;
      "kernel.panic_on_oops" = lib.mkDefault 1;
      "fs.inotify.max_user_instances" = lib.mkDefault 8192;
      "fs.inotify.max_user_watches" = lib.mkDefault 524288;
    };
  };
}
