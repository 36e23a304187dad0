# Base system: hostname, key-only SSH, root and admin users, nix settings, time and journald limits.
{ config, lib, ... }:
let
  cfg = config.nixosK3s.base;
in
{
  options.nixosK3s.base = {
    enable = lib.mkEnableOption "the nixos-k3s base system (SSH, users, nix, time, journald)";

    hostName = lib.mkOption {
      type = lib.types.strMatching "[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?";
      description = "Hostname; also the k3s node name.";
    };

    rootAuthorizedKeys = lib.mkOption {
      type = lib.types.listOf lib.types.singleLineStr;
      description = ''
        Public keys allowed to log in as root: the deploy key (nixos-rebuild runs as root over
        SSH) plus operators' keys. Changing it locks out whoever is removed.
      '';
    };

    adminUsers = lib.mkOption {
      type = lib.types.listOf (
        lib.types.submodule {
          options = {
            name = lib.mkOption {
              type = lib.types.str;
              description = "Login name.";
            };
            authorizedKeys = lib.mkOption {
              type = lib.types.listOf lib.types.singleLineStr;
              description = "Public keys of this user.";
            };
          };
        }
      );
      description = "Wheel users with passwordless sudo, logging in with their keys only.";
    };

    journalMaxUse = lib.mkOption {
      type = lib.types.str;
      default = "1G";
      description = "journald SystemMaxUse=: disk the journal may take before old entries go.";
    };
  };

  config = lib.mkIf cfg.enable {
    networking.hostName = cfg.hostName;

    services.openssh = {
      enable = true;
      settings = {
        PasswordAuthentication = false;
        KbdInteractiveAuthentication = false;
        PermitRootLogin = "prohibit-password";
      };
      # The install step delivers this key (--extra-files), so the host key is known up front.
      hostKeys = [
        {
          path = "/etc/ssh/ssh_host_ed25519_key";
          type = "ed25519";
        }
      ];
    };

    users.mutableUsers = lib.mkDefault false;
    users.users = {
      root.openssh.authorizedKeys.keys = cfg.rootAuthorizedKeys;
    }
    // lib.listToAttrs (
      map (user: {
        inherit (user) name;
        value = {
          isNormalUser = true;
          extraGroups = [ "wheel" ];
          openssh.authorizedKeys.keys = user.authorizedKeys;
        };
      }) cfg.adminUsers
    );
    security.sudo.wheelNeedsPassword = false;

    nix.settings = {
      experimental-features = [
        "nix-command"
        "flakes"
      ];
      trusted-users = [ "root" ];
    };
    nix.gc = {
      automatic = true;
      dates = "weekly";
      options = "--delete-older-than 14d";
    };

    time.timeZone = lib.mkDefault "UTC";
    services.timesyncd.enable = lib.mkDefault true;

    # Appended to journald.conf, whose text is journald's restart trigger: a change applies on switch.
    services.journald.extraConfig = ''
      SystemMaxUse=${cfg.journalMaxUse}
      MaxRetentionSec=1month
    '';
  };
}
