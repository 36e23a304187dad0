# k3s node: nixpkgs services.k3s, with flannel, kube-proxy and network policy off for Cilium or k3s's own flannel.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.nixosK3s.k3s;
  isServer = cfg.role == "server";
  # Servers with embedded etcd: the first one (clusterInit) and every server that joins it.
  usesEtcd = isServer && (cfg.clusterInit || cfg.serverAddr != "");

  # k3s runs `tailscale up` itself for --vpn-auth-file, so tools it calls must be on its PATH.
  # symlinkJoin + wrapProgram reuses the cached k3s build instead of rebuilding it.
  wrappedPackage =
    if cfg.runtimePackages == [ ] then
      cfg.package
    else
      pkgs.symlinkJoin {
        name = "${cfg.package.name}-wrapped";
        paths = [ cfg.package ];
        nativeBuildInputs = [ pkgs.makeWrapper ];
        postBuild = ''
          wrapProgram $out/bin/k3s --prefix PATH : ${lib.makeBinPath cfg.runtimePackages}
        '';
        passthru = {
          inherit (cfg.package) version;
          unwrapped = cfg.package;
        };
        meta.mainProgram = "k3s";
      };

  # An image reference: [registry[:port]/]path[:tag][@sha256:digest].
  imageRef = lib.types.strMatching "[a-z0-9][a-z0-9._-]*(:[0-9]{1,5})?(/[a-z0-9][a-z0-9._-]*)*(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?(@sha256:[0-9a-f]{64})?";
  # One image reference a line, for k3s-pre-pull.sh.
  prePullList = pkgs.writeText "pre-pull-images.txt" (lib.concatLines cfg.prePullImages);
  cniImages = import ./cni-images.nix { inherit lib pkgs; };
  fetchList = pkgs.writeText "cni-fetch-images.txt" (lib.concatLines cfg.fetchImages);

  s3 = cfg.etcdSnapshots.s3;
  # k3s reads the S3 keys from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (the EnvironmentFile),
  # so they never appear on its command line.
  s3Flags = lib.optionals (s3 != null) [
    "--etcd-s3"
    "--etcd-s3-endpoint=${s3.endpoint}"
    "--etcd-s3-bucket=${s3.bucket}"
    "--etcd-s3-folder=${s3.folder}"
    "--etcd-s3-region=${s3.region}"
  ];

  # ExecStart= is one unquoted line: quote the argument that contains spaces.
  etcdFlags =
    if cfg.etcdSnapshots.enable then
      [
        ''"--etcd-snapshot-schedule-cron=${cfg.etcdSnapshots.scheduleCron}"''
        "--etcd-snapshot-retention=${toString cfg.etcdSnapshots.retention}"
      ]
      ++ s3Flags
    else
      [ "--etcd-disable-snapshots" ];

  # Server-only flags. Agents inherit flannel backend, kube-proxy and network policy settings
  # from the server's control config, and `k3s agent` rejects these flags.
  cniFlags = {
    # Cilium replaces flannel, kube-proxy and k3s's network policy controller.
    cilium = [
      "--flannel-backend=none"
      "--disable-network-policy"
      "--disable-kube-proxy"
    ];
    # k3s's embedded flannel over VXLAN (UDP 8472), with kube-proxy and its policy controller.
    flannel = [ "--flannel-backend=vxlan" ];
  };
  serverFlags =
    cniFlags.${cfg.cni}
    ++ [
      "--disable-cloud-controller"
      "--cluster-cidr=${cfg.clusterCidr}"
      "--service-cidr=${cfg.serviceCidr}"
      "--cluster-dns=${cfg.clusterDns}"
      "--write-kubeconfig-mode=0600"
    ]
    ++ map (san: "--tls-san=${san}") cfg.tlsSans
    ++ lib.optionals usesEtcd etcdFlags;
in
{
  options.nixosK3s.k3s = {
    enable = lib.mkEnableOption "a k3s node of a Cilium (no flannel, no kube-proxy) or flannel cluster";

    package = lib.mkOption {
      type = lib.types.package;
      description = "The k3s package (host data: the nixpkgs attribute k3s.package).";
    };

    finalPackage = lib.mkOption {
      type = lib.types.package;
      readOnly = true;
      default = wrappedPackage;
      defaultText = lib.literalMD "`package`, wrapped with `runtimePackages` on its PATH";
      description = "The k3s package the service runs.";
    };

    runtimePackages = lib.mkOption {
      type = lib.types.listOf lib.types.package;
      default = [ ];
      description = "Packages put on the k3s PATH by wrapping the binary (e.g. tailscale).";
    };

    role = lib.mkOption {
      type = lib.types.enum [
        "server"
        "agent"
      ];
      description = "k3s role.";
    };

    clusterInit = lib.mkOption {
      type = lib.types.bool;
      description = "First server: initialise embedded etcd. Other servers join via serverAddr.";
    };

    serverAddr = lib.mkOption {
      type = lib.types.str;
      example = "https://10.0.1.2:6443";
      description = "Server to join; empty only on the first server.";
    };

    tokenFile = lib.mkOption {
      type = lib.types.str;
      description = "Absolute path of the 0600 token file (never a store path).";
    };

    disable = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      description = "Packaged components passed to --disable (servers only).";
    };

    clusterCidr = lib.mkOption {
      type = lib.types.str;
      description = "Pod CIDR; must equal Cilium's IPAM pool.";
    };

    serviceCidr = lib.mkOption {
      type = lib.types.str;
      description = "Service CIDR.";
    };

    clusterDns = lib.mkOption {
      type = lib.types.str;
      description = "CoreDNS service address inside serviceCidr.";
    };

    tlsSans = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      description = "Extra names and addresses in the API server certificate.";
    };

    nodeName = lib.mkOption {
      type = lib.types.str;
      description = "Kubernetes node name.";
    };

    nodeIp = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      description = "Address the node advertises (the private network address).";
    };

    nodeExternalIp = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      description = "External address the node advertises.";
    };

    nodeLabels = lib.mkOption {
      type = lib.types.attrsOf lib.types.str;
      description = "Labels registered with the node (applied at registration only).";
    };

    nodeTaints = lib.mkOption {
      type = lib.types.listOf lib.types.str;
      description = "Taints `key=value:Effect` registered with the node.";
    };

    gracefulNodeShutdown = {
      enable = lib.mkOption {
        type = lib.types.bool;
        description = "Kubelet graceful node shutdown.";
      };
      shutdownGracePeriod = lib.mkOption {
        type = lib.types.nonEmptyStr;
        description = "Total time pods get on shutdown (read only when enabled).";
      };
      shutdownGracePeriodCriticalPods = lib.mkOption {
        type = lib.types.nonEmptyStr;
        description = "Part of shutdownGracePeriod reserved for critical pods (read only when enabled).";
      };
    };

    kubeletConfig = lib.mkOption {
      type = lib.types.attrsOf lib.types.anything;
      description = "Extra KubeletConfiguration fields.";
    };

    # Read only on servers with embedded etcd.
    etcdSnapshots = {
      enable = lib.mkOption {
        type = lib.types.bool;
        description = "Scheduled etcd snapshots (servers with embedded etcd).";
      };
      scheduleCron = lib.mkOption {
        type = lib.types.strMatching "[0-9*/,-]+( [0-9*/,-]+){4}";
        description = "Five-field cron schedule.";
      };
      retention = lib.mkOption {
        type = lib.types.ints.positive;
        description = "Snapshots kept.";
      };
      s3 = lib.mkOption {
        description = ''
          Also upload every snapshot to this S3 bucket (k3s --etcd-s3-*). The keys come from
          `environmentFile`, the k3s service's EnvironmentFile; /etc/nixos-k3s/etcd-restore.env
          records the same settings for etcd-restore.sh.
        '';
        type = lib.types.nullOr (
          lib.types.submodule {
            options = {
              endpoint = lib.mkOption {
                type = lib.types.strMatching "[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:[0-9]{1,5})?";
                description = "S3 host name[:port], no scheme.";
              };
              bucket = lib.mkOption {
                type = lib.types.strMatching "[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]";
                description = "Bucket name.";
              };
              folder = lib.mkOption {
                type = lib.types.strMatching "[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*";
                description = "Key prefix inside the bucket.";
              };
              region = lib.mkOption {
                type = lib.types.strMatching "[a-z0-9][a-z0-9-]{0,31}";
                description = "Bucket region.";
              };
              environmentFile = lib.mkOption {
                type = lib.types.str;
                description = ''
                  Absolute path of the 0600 file with AWS_ACCESS_KEY_ID= and
                  AWS_SECRET_ACCESS_KEY= lines (never a store path).
                '';
              };
            };
          }
        );
      };
    };

    vpnAuthFile = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      description = ''
        0600 file with `name=tailscale,joinKey=<key>` for k3s --vpn-auth-file; needs tailscale
        in `runtimePackages`.
      '';
    };

    cni = lib.mkOption {
      type = lib.types.enum [
        "cilium"
        "flannel"
      ];
      description = ''
        The cluster's CNI. `cilium`: servers run without flannel, kube-proxy and network policy
        (Cilium, installed with Helm, replaces them). `flannel`: k3s's own flannel with VXLAN.
      '';
    };

    externalCloudProvider = lib.mkOption {
      type = lib.types.bool;
      description = ''
        Run the kubelet with cloud-provider=external (servers and agents alike: with
        --disable-cloud-controller k3s stops setting it itself). The node then carries the
        node.cloudprovider.kubernetes.io/uninitialized taint until an external cloud
        controller (hcloud-cloud-controller-manager) initialises it.
      '';
    };

    extraFlags = lib.mkOption {
      type = lib.types.listOf (lib.types.strMatching "--[a-z0-9][a-z0-9-]*(=[^[:space:]\"'$%\\\\]*)?");
      description = "Further k3s flags, one `--flag[=value]` per item.";
    };

    prePullImages = lib.mkOption {
      type = lib.types.listOf imageRef;
      description = ''
        Images pulled through k3s's containerd (CRI, so registries.yaml applies) while k3s starts:
        the CNI's pods on this node, which then start without a pull once the node registers.
        Not through services.k3s.images: k3s pulls that directory's lists before its kubelet
        starts and, on a joining server, before it joins etcd (k3s-io/k3s#4194), so the pull
        would lengthen the join instead of running beside it.
      '';
    };

    fetchImages = lib.mkOption {
      type = lib.types.listOf imageRef;
      description = ''
        Images whose blobs k3s-cni-fetch.service downloads (skopeo, into OCI archives in
        ${cniImages.dir}) from boot on, before k3s runs: the host document's k3s.fetchImages
        (the digest-pinned prePullImages of this host and of its containers, sorted, each once;
        components/hosts/render.py fetch_images), whose pre-pulls then import them and fetch
        only the manifests. `nixos-k3s-cni-fetch --host-json` reads the same list from the
        release's host document. Empty inside a container (the host fetches for it).
      '';
    };

    holdUntil = lib.mkOption {
      type = lib.types.nullOr (lib.types.strMatching "/[^[:space:]]+");
      default = null;
      example = "/var/lib/nixos-k3s/k3s-released";
      description = ''
        When set, k3s.service starts only once this file exists (ConditionPathExists=): an
        installed host boots with k3s held back, and the deploy creates the file when the host's
        turn to join comes (components/scripts/host-activate.sh): after the first server's API
        answers, although every host is installed (or booted from the image) with k3s in it.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    # Role, clusterInit and serverAddr agree: components/hosts/hostspec.py (K3s) checks that once, for
    # every host document, before any host sees it.
    assertions = [
      {
        assertion = lib.hasPrefix "/" cfg.tokenFile && !(lib.hasPrefix builtins.storeDir cfg.tokenFile);
        message = "nixosK3s.k3s.tokenFile must be an absolute path outside the Nix store.";
      }
      {
        assertion =
          usesEtcd && s3 != null
          -> lib.hasPrefix "/" s3.environmentFile && !(lib.hasPrefix builtins.storeDir s3.environmentFile);
        message = "nixosK3s.k3s.etcdSnapshots.s3.environmentFile must be an absolute path outside the Nix store.";
      }
      {
        assertion = cfg.vpnAuthFile != null -> cfg.runtimePackages != [ ];
        message = "nixosK3s.k3s.vpnAuthFile needs tailscale in runtimePackages (nixosK3s.tailscale.wrapK3s).";
      }
    ];

    systemd.services.k3s.unitConfig = lib.mkIf (cfg.holdUntil != null) {
      ConditionPathExists = cfg.holdUntil;
    };

    # What etcd-restore.sh needs to run `k3s server --cluster-reset` like the service would.
    environment.etc."nixos-k3s/etcd-restore.env" = lib.mkIf (isServer && usesEtcd) {
      mode = "0644";
      text = ''
        TOKEN_FILE=${cfg.tokenFile}
        S3_FLAGS="${lib.concatStringsSep " " (lib.optionals cfg.etcdSnapshots.enable s3Flags)}"
        S3_ENVIRONMENT_FILE=${lib.optionalString (cfg.etcdSnapshots.enable && s3 != null) s3.environmentFile}
      '';
    };

    # On the host's PATH, so in the Hetzner image too (its base host document has k3s, held):
    # the deploy starts it before it builds a release (host-activate.sh start_early_fetch). A
    # container's pre-pull imports what its host downloaded.
    environment.systemPackages = lib.mkIf (!config.boot.isContainer) [ cniImages.tool ];

    # Started with k3s (wanted by it, not ordered after it): a server's k3s.service is active
    # only once it has joined etcd, and the pull is meant to run during the join. The script
    # pulls the missing images concurrently and waits for all of them. Type=exec: no
    # start job waits for the pull; a failed pull only leaves the image to the kubelet.
    # RemainAfterExit: it stays active, so an activation that changes the list (a Cilium
    # upgrade) restarts it and the new images are pulled while the release rolls out. First it
    # imports the archives k3s-cni-fetch.service left (in a container, through the host's
    # read-only bind: k3s-containers.nix), waiting for a running download (flock, util-linux).
    systemd.services.k3s-pre-pull = {
      enable = cfg.prePullImages != [ ];
      description = "Pull the CNI's images while k3s starts";
      wantedBy = [ "k3s.service" ];
      partOf = [ "k3s.service" ];
      unitConfig.ConditionPathExists = lib.mkIf (cfg.holdUntil != null) cfg.holdUntil;
      path = [ pkgs.util-linux ];
      serviceConfig = {
        Type = "exec";
        RemainAfterExit = true;
        ExecStart = "${pkgs.bash}/bin/bash ${./k3s-pre-pull.sh} ${cfg.finalPackage}/bin/k3s ${prePullList} ${cniImages.dir}";
      };
    };

    # From boot (not held back with k3s: an installed host boots final with k3s held until its
    # turn, and the download fills that wait), and on an activation that changes the list.
    # Type=exec, not oneshot: neither multi-user.target nor an activation's start job waits for
    # the download; RemainAfterExit keeps it active, so a changed list restarts it.
    systemd.services.k3s-cni-fetch = {
      enable = cfg.fetchImages != [ ];
      description = "Download the CNI's images before k3s runs";
      wantedBy = [ "multi-user.target" ];
      after = [ "network-online.target" ];
      wants = [ "network-online.target" ];
      serviceConfig = {
        Type = "exec";
        RemainAfterExit = true;
        ExecStart = "${lib.getExe cniImages.tool} ${fetchList}";
      };
    };
    # Present before any container starts: its read-only bind of the directory needs it.
    systemd.tmpfiles.settings."10-nixos-k3s-cni-images" = lib.mkIf (cfg.fetchImages != [ ]) {
      ${cniImages.dir}.d = {
        mode = "0755";
        user = "root";
        group = "root";
      };
    };

    services.k3s = {
      enable = true;
      package = cfg.finalPackage;
      inherit (cfg) role serverAddr tokenFile;
      clusterInit = isServer && cfg.clusterInit;
      disable = lib.optionals isServer cfg.disable;
      inherit (cfg) nodeName;
      nodeIP = cfg.nodeIp;
      nodeLabel = lib.mapAttrsToList (key: value: "${key}=${value}") cfg.nodeLabels;
      nodeTaint = cfg.nodeTaints;
      extraKubeletConfig = cfg.kubeletConfig;
      # A string, not a Nix path: the file stays where it is and never enters the store.
      environmentFile = lib.mkIf (isServer && usesEtcd && cfg.etcdSnapshots.enable && s3 != null) s3.environmentFile;
      # The periods mean something only when enabled (an nspawn agent sets enable alone).
      gracefulNodeShutdown =
        if cfg.gracefulNodeShutdown.enable then cfg.gracefulNodeShutdown else { enable = false; };
      extraFlags =
        lib.optionals isServer serverFlags
        # services.k3s.nodeExternalIP is newer than the nixos-25.11 pin (nixpkgs PR #505398).
        ++ lib.optional (cfg.nodeExternalIp != null) "--node-external-ip=${cfg.nodeExternalIp}"
        ++ lib.optional (cfg.vpnAuthFile != null) "--vpn-auth-file=${cfg.vpnAuthFile}"
        ++ lib.optional cfg.externalCloudProvider "--kubelet-arg=cloud-provider=external"
        ++ cfg.extraFlags;
    };
  };
}
