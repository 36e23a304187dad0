# Lima guest support for a NixOS that replaced Colima's Ubuntu: what `limactl`/`colima` need at every boot.
#
# Lima's hostagent (pkg/hostagent/requirements.go) starts a VM only when, over SSH as the Lima
# user with Lima's key, `/bin/bash` runs, `sudo diff -q /run/lima-ssh-ready
# /mnt/lima-cidata/meta-data` and the same for /run/lima-boot-done succeed; port forwarding needs
# lima-guestagent (from the cidata disk) on vsock. Colima (limautil/network.go) reads the VM
# address with `ip -4 addr show col0`. On Ubuntu, cloud-init and Lima's boot scripts do this; here
# three units do it from the same cidata disk: NIC names, the Lima user, the guest agent.
# Lima/Colima provisioning scripts and host directory mounts are Ubuntu-specific and not run.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.nixosK3s.limaGuest;
  cidata = "/mnt/lima-cidata";

  # Names the NICs as Lima's netplan network-config says (match.macaddress -> set-name): eth0 for
  # Lima's user network, col0 for Colima's reachable address. Env for tests: LIMA_CIDATA_MNT,
  # SYSFS_NET, NIC_WAIT_SECONDS.
  renameScript = ''
    cidata=''${LIMA_CIDATA_MNT:-/mnt/lima-cidata}
    sysfs_net=''${SYSFS_NET:-/sys/class/net}
    wait_seconds=''${NIC_WAIT_SECONDS:-30}

    nic_with_mac() {
      local dev
      for dev in "$sysfs_net"/*; do
        if [ "$(cat "$dev/address" 2>/dev/null)" = "$1" ]; then
          basename "$dev"
          return 0
        fi
      done
      return 1
    }

    # Let udev finish its own (predictable) naming first, or it could rename behind our back.
    udevadm settle --timeout="$wait_seconds" || true

    pairs=$(awk '
      /macaddress:/ { mac = tolower($2); gsub(/["\047]/, "", mac) }
      /set-name:/ && mac != "" { print mac, $2; mac = "" }
    ' "$cidata/network-config")

    while read -r mac name; do
      [ -n "$mac" ] || continue
      waited=0
      until current=$(nic_with_mac "$mac"); do
        if [ "$waited" -ge "$wait_seconds" ]; then
          echo "lima-nic-names: no NIC with MAC $mac for $name" >&2
          continue 2
        fi
        sleep 1
        waited=$((waited + 1))
      done
      if [ "$current" != "$name" ]; then
        echo "lima-nic-names: renaming $current ($mac) to $name"
        ip link set dev "$current" down
        ip link set dev "$current" name "$name"
      fi
    done <<<"$pairs"
  '';

  # Creates the Lima user (Mac user name and UID from lima.env) with Lima's SSH keys from the
  # cloud-init user-data and passwordless sudo, then opens Lima's "ssh ready" and "boot done"
  # gates. Env for tests: LIMA_CIDATA_MNT, LIMA_RUN_DIR, LIMA_KEYS_DIR.
  initScript = ''
    cidata=''${LIMA_CIDATA_MNT:-/mnt/lima-cidata}
    run_dir=''${LIMA_RUN_DIR:-/run}
    keys_dir=''${LIMA_KEYS_DIR:-/etc/ssh/authorized_keys.d}

    # lima.env is KEY=VALUE per line and values may hold spaces: read it, never source it.
    while IFS= read -r line; do
      case "$line" in
      LIMA_CIDATA_*=*) export "''${line?}" ;;
      esac
    done <"$cidata/lima.env"
    user=''${LIMA_CIDATA_USER:?lima.env has no LIMA_CIDATA_USER}
    uid=''${LIMA_CIDATA_UID:?lima.env has no LIMA_CIDATA_UID}
    home=''${LIMA_CIDATA_HOME:-/home/$user.linux}

    if ! id -u "$user" >/dev/null 2>&1; then
      useradd --uid "$uid" --user-group --home-dir "$home" --create-home \
        --shell /run/current-system/sw/bin/bash --comment "Lima (Colima) login" "$user"
    fi
    usermod --append --groups lima "$user"

    # users: - name: ... ssh-authorized-keys: - "ssh-ed25519 ..." (Go %q quoting)
    keys=$(awk '
      /^[[:space:]]*ssh-authorized-keys:/ { inkeys = 1; next }
      inkeys && /^[[:space:]]*-[[:space:]]/ {
        sub(/^[[:space:]]*-[[:space:]]*/, ""); gsub(/^"|"$/, ""); print; next
      }
      { inkeys = 0 }
    ' "$cidata/user-data")
    if [ -z "$keys" ]; then
      echo "lima-init: no ssh-authorized-keys in $cidata/user-data" >&2
      exit 1
    fi

    mkdir -p "$keys_dir"
    printf '%s\n' "$keys" >"$keys_dir/.$user.tmp"
    chmod 0444 "$keys_dir/.$user.tmp"
    mv "$keys_dir/.$user.tmp" "$keys_dir/$user"

    mkdir -p "$home/.ssh"
    printf '%s\n' "$keys" >"$home/.ssh/authorized_keys"
    chmod 0700 "$home/.ssh"
    chmod 0600 "$home/.ssh/authorized_keys"
    chown -R "$uid" "$home/.ssh"

    # The instance-id in meta-data changes on every boot: a copy proves this boot is done.
    cp "$cidata/meta-data" "$run_dir/lima-ssh-ready"
    cp "$cidata/meta-data" "$run_dir/lima-boot-done"
  '';

  # Lima's hostagent talks to the guest agent over vsock (vz) or a virtio port.
  guestagentScript = ''
    cidata=''${LIMA_CIDATA_MNT:-/mnt/lima-cidata}
    while IFS= read -r line; do
      case "$line" in
      LIMA_CIDATA_*=*) export "''${line?}" ;;
      esac
    done <"$cidata/lima.env"
    args=(daemon)
    if [ "''${LIMA_CIDATA_VSOCK_PORT:-0}" != 0 ]; then
      args+=(--vsock-port "$LIMA_CIDATA_VSOCK_PORT")
    fi
    if [ -n "''${LIMA_CIDATA_VIRTIO_PORT:-}" ]; then
      args+=(--virtio-port "$LIMA_CIDATA_VIRTIO_PORT")
    fi
    exec "$cidata/lima-guestagent" "''${args[@]}"
  '';

  script =
    name: runtimeInputs: text:
    lib.getExe (pkgs.writeShellApplication { inherit name runtimeInputs text; });
in
{
  options.nixosK3s.limaGuest = {
    enable = lib.mkEnableOption ''
      the Lima guest services (cidata mount, NIC names, Lima user, guest agent) that let
      colima/limactl start, stop, list and shell into this VM'';
  };

  config = lib.mkIf cfg.enable {
    fileSystems.${cidata} = {
      device = "/dev/disk/by-label/cidata";
      fsType = "iso9660";
      # Lima's own mount options (cidata user-data); nofail: a VM started without Lima still boots.
      options = [
        "ro"
        "mode=0700"
        "dmode=0700"
        "overriderockperm"
        "exec"
        "uid=0"
        "nofail"
      ];
    };

    systemd.services.lima-nic-names = {
      description = "Name NICs as Lima's network-config says (eth0, col0)";
      unitConfig = {
        DefaultDependencies = false;
        RequiresMountsFor = cidata;
        ConditionPathExists = "${cidata}/network-config";
      };
      after = [ "systemd-udev-trigger.service" ];
      before = [
        "network-pre.target"
        "systemd-networkd.service"
      ];
      wants = [ "network-pre.target" ];
      wantedBy = [
        "systemd-networkd.service"
        "multi-user.target"
      ];
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        ExecStart = script "lima-nic-names" [
          pkgs.coreutils
          pkgs.gawk
          pkgs.iproute2
          config.systemd.package
        ] renameScript;
      };
    };

    # Colima's user logs in as a member of this group; sudo as Lima's user-data grants it.
    users.groups.lima = { };
    security.sudo.extraRules = [
      {
        groups = [ "lima" ];
        commands = [
          {
            command = "ALL";
            options = [ "NOPASSWD" ];
          }
        ];
      }
    ];
    # The Lima user is created at boot from cidata (its name is the Mac user's); with immutable
    # users every activation would delete it and break `colima ssh`/`colima ls` until reboot.
    users.mutableUsers = true;

    systemd.services.lima-init = {
      description = "Lima user, SSH keys and readiness gates from the cidata disk";
      unitConfig = {
        RequiresMountsFor = cidata;
        ConditionPathExists = "${cidata}/lima.env";
      };
      before = [ "sshd.service" ];
      wantedBy = [ "multi-user.target" ];
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        ExecStart = script "lima-init" [
          pkgs.coreutils
          pkgs.gawk
          pkgs.shadow
        ] initScript;
      };
    };

    systemd.services.lima-guestagent = {
      description = "Lima guest agent (port forwarding and events for the host agent)";
      unitConfig = {
        RequiresMountsFor = cidata;
        ConditionPathExists = "${cidata}/lima-guestagent";
      };
      after = [ "lima-init.service" ];
      wants = [ "lima-init.service" ];
      wantedBy = [ "multi-user.target" ];
      serviceConfig = {
        ExecStart = script "lima-guestagent" [ pkgs.coreutils ] guestagentScript;
        Restart = "on-failure";
        RestartSec = "3s";
      };
    };

    # Lima runs its readiness scripts with `#!/bin/bash` over SSH.
    systemd.tmpfiles.settings."10-lima-guest"."/bin/bash"."L+".argument =
      "/run/current-system/sw/bin/bash";
  };
}
