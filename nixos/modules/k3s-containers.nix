# k3s agents in systemd-nspawn NixOS containers, run the way the cluster's CNI needs (k3s-container-modes.json).
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.nixosK3s.k3sContainers;

  # Per mode: privateUsers, capabilities, system calls, devices and binds, each with its reason.
  # The real-kernel drill (tests/kernel/test_container_drill.py) reads the same file.
  modeData = lib.importJSON ./k3s-container-modes.json;
  modeOf = c: modeData.modes.${c.mode};
  # The cluster's CNI (the host's k3s runs the same): decides which modes can work, and the
  # container's firewall.
  inherit (config.nixosK3s.k3s) cni;

  # Inside a container, systemd hands the credentials nspawn loaded to the k3s unit
  # (LoadCredential=ID without a path imports the system credential of that name).
  credentialDir = "/run/credentials/k3s.service";

  # The systemd cgroup driver matches the container's PID 1. A user-namespaced kubelet cannot
  # own /dev/kmsg or set oom_score_adj below its parent's: KubeletInUserNamespace tolerates that.
  nspawnKubeletConfig =
    c:
    {
      cgroupDriver = "systemd";
    }
    // lib.optionalAttrs (modeOf c).kubeletInUserNamespace {
      featureGates.KubeletInUserNamespace = true;
    };

  # k3s state lives outside an ephemeral container's root, on the host; in a user namespace the
  # bind is idmapped to the container's root user (idmap needs a user namespace).
  stateBinds =
    c:
    let
      idmap = lib.optionalString ((modeOf c).privateUsers != "no") ":idmap";
    in
    [
      "--bind=${c.stateDir}/rancher:/var/lib/rancher${idmap}"
      "--bind=${c.stateDir}/kubelet:/var/lib/kubelet${idmap}"
      "--bind=${c.stateDir}/etc-rancher:/etc/rancher${idmap}"
    ];

  # A bpffs instance of each container's own, mounted on the host (every bpf mount is a new
  # instance) and bound to the container's /sys/fs/bpf: nspawn's /sys is a read-only tmpfs
  # without fs/bpf, and the container's Cilium pins its node's maps apart from the host agent's.
  bpffsDir = name: "/run/nixos-k3s/bpffs/${name}";

  # The host's downloads of the CNI's images (k3s-cni-fetch.service: the host's list holds its
  # containers' images), read-only at the same path, for the container's pre-pull to import.
  # Not idmapped: in a user namespace the files show as owned by nobody, and they are
  # world-readable (0644, the directory 0755).
  cniImagesDir = (import ./cni-images.nix { inherit lib pkgs; }).dir;

  bindFlags =
    name: c:
    lib.mapAttrsToList (
      path: access: if access == "ro" then "--bind-ro=${path}" else "--bind=${path}"
    ) (modeOf c).binds
    ++ lib.optional (modeOf c).bpffs "--bind=${bpffsDir name}:/sys/fs/bpf"
    # The host's tmpfiles rule for the directory comes with its list (k3s.nix): nspawn refuses
    # to start with a bind whose source is missing (systemd src/nspawn/nspawn-mount.c
    # mount_bind: "Failed to stat").
    ++ lib.optional (
      config.nixosK3s.k3s.enable
      && config.nixosK3s.k3s.fetchImages != [ ]
      && (c.k3s.prePullImages or [ ]) != [ ]
    ) "--bind-ro=${cniImagesDir}";

  # The API port (firewall-ports.json, where render takes every port number from).
  apiPort = (lib.importJSON ./firewall-ports.json).tcp.api.port;
  # Ports the agent serves inside the container: the ones this host's node serves to other
  # nodes (render chose them by CNI), less the API, which only servers serve.
  innerTcpPorts = lib.remove apiPort cfg.nodeTcpPorts;

  containerOptions = {
    options = {
      hostAddress = lib.mkOption {
        type = lib.types.str;
        description = "Host end of the veth pair; the container's default gateway.";
      };
      localAddress = lib.mkOption {
        type = lib.types.str;
        description = "Container end of the veth pair.";
      };
      ephemeral = lib.mkOption {
        type = lib.types.bool;
        description = "Start from an empty root each time; k3s state is bind-mounted from stateDir.";
      };
      mode = lib.mkOption {
        type = lib.types.enum (lib.attrNames modeData.modes);
        description = ''
          How the container runs (k3s-container-modes.json): `host-users` shares the host's user
          namespace with the capabilities Cilium needs; `user-namespace` is unprivileged
          (privateUsers = "pick") and can run flannel only.
        '';
      };
      tailscale = lib.mkOption {
        type = lib.types.bool;
        description = "Run tailscaled inside and let k3s join the tailnet (--vpn-auth-file).";
      };
      nameservers = lib.mkOption {
        type = lib.types.nonEmptyListOf lib.types.str;
        description = "DNS servers for systemd-resolved inside the container.";
      };
      stateDir = lib.mkOption {
        type = lib.types.str;
        description = "Host directory holding k3s state of an ephemeral container.";
      };
      credentials = {
        k3sToken = lib.mkOption {
          type = lib.types.str;
          description = "Host path of the 0600 k3s token file, passed in as credential `k3s-token`.";
        };
        tailscaleAuthKey = lib.mkOption {
          type = lib.types.nullOr lib.types.str;
          description = "Host path of the vpn-auth file, passed in as credential `tailscale-key`.";
        };
      };
      k3s = lib.mkOption {
        type = lib.types.attrsOf lib.types.anything;
        description = ''
          The agent's nixosK3s.k3s settings from the host document (containers[].k3s: role,
          nodeName, serverAddr, nodeLabels, nodeTaints, nodeExternalIp, kubeletConfig,
          extraFlags), handed whole to the container's own k3s module, whose options check them.
          nodeName must be unique in the cluster (containers of the same name on several hosts
          must not register as one node).
        '';
      };
    };
  };

  containerConfig =
    name: c:
    { pkgs, ... }:
    {
      imports = [
        ./k3s.nix
        ./tailscale.nix
      ];

      system.stateVersion = cfg.stateVersion;

      networking = {
        # The host's resolv.conf points at its own 127.0.0.53, unreachable from this netns.
        useHostResolvConf = lib.mkForce false;
        inherit (c) nameservers;
        # tailscale would otherwise take over the default route.
        defaultGateway = {
          address = c.hostAddress;
          interface = "eth0";
        };
        firewall = {
          enable = true;
          allowedTCPPorts = innerTcpPorts;
          allowedUDPPorts = cfg.tunnelUdpPorts;
          # The CNI's own devices (cilium_host, lxc+, ... or cni0, flannel.1): pod traffic.
          inherit (cfg) trustedInterfaces;
          # The CNI answers for addresses routed over other devices; strict rpfilter drops that.
          checkReversePath = "loose";
        };
      };
      services.resolved.enable = true;

      boot.kernel.sysctl."net.ipv4.ip_forward" = 1;

      nixosK3s.k3s = c.k3s // {
        enable = true;
        package = pkgs.${cfg.package};
        tokenFile = "${credentialDir}/k3s-token";
        # The veth address: without it k3s could pick tailscale0's or another address.
        nodeIp = c.localAddress;
        kubeletConfig = lib.recursiveUpdate (nspawnKubeletConfig c) c.k3s.kubeletConfig;
        vpnAuthFile = if c.tailscale then "${credentialDir}/tailscale-key" else null;
        # Off for the agents, as it has always been; its periods are not read while it is off.
        gracefulNodeShutdown.enable = false;
        # No cloud controller initialises an nspawn node (its providerID says nspawn://).
        externalCloudProvider = false;
        # The host downloads the container's images (its k3s.fetchImages) and binds them in.
        fetchImages = [ ];
      };
      nixosK3s.tailscale = {
        enable = c.tailscale;
        # k3s joins the tailnet itself, through --vpn-auth-file.
        authKeyFile = null;
        wrapK3s = c.tailscale;
      };
      systemd.services.k3s.serviceConfig.LoadCredential = [
        "k3s-token"
      ]
      ++ lib.optional c.tailscale "tailscale-key";
    };

  nspawnContainer =
    name: c:
    let
      mode = modeOf c;
    in
    {
      autoStart = true;
      inherit (mode) privateUsers;
      # privateNetwork also leaves /proc/sys/net writable (nspawn's MOUNT_APPLY_APIVFS_NETNS).
      privateNetwork = true;
      inherit (c) hostAddress localAddress ephemeral;
      # The mode's capabilities and devices are listed in full (CAP_NET_ADMIN, /dev/net/tun),
      # so enableTun, which adds the same two, stays off.
      enableTun = false;
      additionalCapabilities = lib.attrNames mode.capabilities;
      # EXTRA_NSPAWN_FLAGS is split on whitespace: no flag may contain a space.
      extraFlags =
        bindFlags name c
        ++ map (call: "--system-call-filter=${call}") (lib.attrNames mode.systemCallFilter)
        ++ [ "--load-credential=k3s-token:${c.credentials.k3sToken}" ]
        ++ lib.optional c.tailscale "--load-credential=tailscale-key:${c.credentials.tailscaleAuthKey}"
        ++ lib.optionals c.ephemeral (stateBinds c);
      allowedDevices = lib.mapAttrsToList (node: modifier: { inherit node modifier; }) mode.devices;
      config = containerConfig name c;
    };

  hostUsersContainers = lib.any (c: (modeOf c).privateUsers == "no") (lib.attrValues cfg.containers);
in
{
  options.nixosK3s.k3sContainers = {
    enable = lib.mkEnableOption "k3s agents in nixos-containers";

    containers = lib.mkOption {
      type = lib.types.attrsOf (lib.types.submodule containerOptions);
      description = "Agents by container name (at most 11 characters: the host veth is ve-<name>).";
    };

    package = lib.mkOption {
      type = lib.types.str;
      description = ''
        nixpkgs attribute of the k3s package inside the containers. Must be >= 1.34: its
        containerd (>= 2.1) finds the CNI binaries without a custom containerd template.
      '';
    };

    tunnelUdpPorts = lib.mkOption {
      type = lib.types.listOf lib.types.port;
      description = ''
        UDP ports of the CNI's overlay (VXLAN or Geneve, see firewall-ports.json), opened inside
        every container and on the host's veths; must match the cluster's tunnel protocol or pods
        on the containers cannot reach other nodes.
      '';
    };

    trustedInterfaces = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      description = "The CNI's devices, trusted by the firewall inside every container.";
    };

    nodeTcpPorts = lib.mkOption {
      type = lib.types.listOf lib.types.port;
      description = ''
        TCP ports this host's node serves to other nodes (the private interface's), opened on the
        veths too: the containers' nodes reach it through them.
      '';
    };

    stateVersion = lib.mkOption {
      type = lib.types.str;
      default = config.system.stateVersion;
      defaultText = lib.literalExpression "config.system.stateVersion";
      description = "system.stateVersion of the containers.";
    };
  };

  config = lib.mkIf (cfg.enable && cfg.containers != { }) {
    assertions = [
      {
        assertion = lib.versionAtLeast pkgs.${cfg.package}.version "1.34";
        message = "nixosK3s.k3sContainers.package: ${cfg.package} is ${pkgs.${cfg.package}.version}; containers need k3s >= 1.34 (containerd >= 2.1).";
      }
    ]
    # The document's own rules (container names, the tailscale key, paths without whitespace,
    # which EXTRA_NSPAWN_FLAGS would split) are checked once, by components/hosts/hostspec.py.
    ++ lib.mapAttrsToList (name: c: {
      assertion = lib.elem cni (modeOf c).cnis;
      message = "nixosK3s.k3sContainers.${name}: mode ${c.mode} cannot run ${cni}: ${
        modeData.refusals."${cni}/${c.mode}" or "not supported"
      }.";
    }) cfg.containers;

    containers = lib.mapAttrs nspawnContainer cfg.containers;

    # Containers reach the internet and the cluster through the host.
    networking.nat = {
      enable = true;
      internalInterfaces = [ "ve-+" ];
    };
    # The containers are nodes too, and reach this host's node through their veths: its API
    # (when a server), kubelet, CNI health checks and Hubble, and the overlay must answer there.
    networking.firewall.interfaces."ve-+" = {
      allowedTCPPorts = lib.unique ([ apiPort ] ++ cfg.nodeTcpPorts);
      allowedUDPPorts = cfg.tunnelUdpPorts;
    };

    # Containers cannot load modules or change non-namespaced sysctls themselves.
    boot.kernelModules = [
      "overlay"
      "br_netfilter"
    ];
    # mkOverride 900, as in cilium-host.nix: above nixpkgs' mkDefault sysctls, below a host's own.
    boot.kernel.sysctl = {
      "net.netfilter.nf_conntrack_max" = lib.mkOverride 900 131072;
    }
    # A kubelet outside a user namespace fails to start when one of its kernel tunables differs
    # and it cannot write it (/proc/sys is read-only in the container): the host sets them first.
    # 901 yields to cilium-host.nix's 900 definitions of the same keys and values.
    // lib.optionalAttrs hostUsersContainers {
      "vm.overcommit_memory" = lib.mkOverride 901 1;
      "kernel.panic" = lib.mkOverride 901 10;
      "kernel.panic_on_oops" = lib.mkOverride 901 1;
      "vm.panic_on_oom" = lib.mkOverride 900 0;
      "kernel.keys.root_maxkeys" = lib.mkOverride 900 1000000;
      "kernel.keys.root_maxbytes" = lib.mkOverride 900 25000000;
    };

    systemd.mounts = lib.mapAttrsToList (name: _: {
      what = "bpffs";
      where = bpffsDir name;
      type = "bpf";
      options = "rw,nosuid,nodev,noexec,relatime,mode=700";
      before = [ "container@${name}.service" ];
      requiredBy = [ "container@${name}.service" ];
    }) (lib.filterAttrs (_: c: (modeOf c).bpffs) cfg.containers);

    systemd.tmpfiles.settings."10-nixos-k3s-containers" = lib.mkMerge (
      lib.mapAttrsToList (
        _: c:
        lib.optionalAttrs c.ephemeral (
          lib.genAttrs
            [
              c.stateDir
              "${c.stateDir}/rancher"
              "${c.stateDir}/kubelet"
              "${c.stateDir}/etc-rancher"
            ]
            (_: {
              d = {
                mode = "0700";
                user = "root";
                group = "root";
              };
            })
        )
      ) cfg.containers
    );
  };
}
