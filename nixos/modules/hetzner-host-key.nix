# First boot from the Hetzner NixOS image: install the first-boot SSH host key from the user data before sshd starts.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.nixosK3s.hetznerHostKey;
  keyFile = "/etc/ssh/ssh_host_ed25519_key";
in
{
  options.nixosK3s.hetznerHostKey = {
    enable = lib.mkEnableOption ''
      installing the SSH host key from the server's user data (cloud-config `ssh_keys`,
      written by components/machines/userdata.py) when the host has none: the first boot from the
      NixOS image. It is a throwaway key the deploy pins for its first connection, over which
      install.sh puts the host's own key in its place
    '';

    metadataUrl = lib.mkOption {
      type = lib.types.str;
      default = "http://169.254.169.254/hetzner/v1/userdata";
      description = "Hetzner's metadata service address of the server's user data.";
    };
  };

  config = lib.mkIf cfg.enable {
    systemd.services.nixos-k3s-host-key = {
      description = "Install the SSH host key from the Hetzner user data";
      wantedBy = [
        "multi-user.target"
        "sshd.service"
      ];
      before = [
        "sshd.service"
        "sshd-keygen.service"
      ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      # A host installed with nixos-anywhere, or booted before, has its key already.
      unitConfig.ConditionPathExists = "!${keyFile}";
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
      };
      path = [
        pkgs.coreutils
        pkgs.curl
        pkgs.gawk
        pkgs.openssh
      ];
      script = ''
        set -euo pipefail
        umask 077
        data=$(curl -fsS --retry 30 --retry-delay 2 --retry-connrefused --max-time 10 \
          ${lib.escapeShellArg cfg.metadataUrl})
        printf '%s\n' "$data" | awk '
          key && /^    / { sub(/^    /, ""); print; next }
          { key = 0 }
          /^  ed25519_private: [|]$/ { key = 1 }
        ' >${keyFile}.new
        public=$(printf '%s\n' "$data" | awk '/^  ed25519_public: / { print $2, $3; exit }')
        derived=$(ssh-keygen -y -f ${keyFile}.new | awk '{ print $1, $2 }') || {
          rm -f ${keyFile}.new
          echo "the user data has no usable ssh_keys.ed25519_private" >&2
          exit 1
        }
        if [ "$derived" != "$public" ]; then
          rm -f ${keyFile}.new
          echo "ssh_keys.ed25519_private does not match ssh_keys.ed25519_public" >&2
          exit 1
        fi
        printf '%s\n' "$public" >${keyFile}.pub
        chmod 0644 ${keyFile}.pub
        mv ${keyFile}.new ${keyFile}
      '';
    };
  };
}
