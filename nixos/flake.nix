# Thin flake: one nixosConfiguration per hosts/<name>.json, all built from configuration.nix.
{
  description = "nixos-k3s hosts";

  inputs = {
    # nixos-25.11
    nixpkgs.url = "github:NixOS/nixpkgs/8fd9daa3db09ced9700431c5b7ad0e8ba199b575";
    # disko v1.13.0
    disko = {
      url = "github:nix-community/disko/de5708739256238fb912c62f03988815db89ec9a";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs =
    { nixpkgs, ... }@inputs:
    let
      inherit (nixpkgs) lib;
      hostsDir = ./hosts;
      hostFiles = lib.filterAttrs (file: kind: kind == "regular" && lib.hasSuffix ".json" file) (
        if builtins.pathExists hostsDir then builtins.readDir hostsDir else { }
      );
      mkHost =
        name:
        let
          host = lib.importJSON (hostsDir + "/${name}.json");
        in
        if (host.name or null) != name then
          throw "nixos-k3s: hosts/${name}.json describes host ${builtins.toJSON (host.name or null)}"
        else
          lib.nixosSystem {
            specialArgs = { inherit host inputs; };
            modules = [ ./configuration.nix ];
          };
      hostNames = map (lib.removeSuffix ".json") (builtins.attrNames hostFiles);
    in
    {
      nixosConfigurations = lib.genAttrs hostNames mkHost;
    };
}
