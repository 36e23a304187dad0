# Evaluates nixos/configuration.nix without nixpkgs: a builtins-only stand-in for the few lib functions it calls.
{ hostFile }:
let
  lib = {
    importJSON = path: builtins.fromJSON (builtins.readFile path);
    inherit (builtins) concatMap concatStringsSep listToAttrs;
    mkMerge = definitions: { _type = "merge"; contents = definitions; };
    optionalAttrs = cond: attrs: if cond then attrs else { };
  };
  module = import ../../nixos/configuration.nix {
    inherit lib;
    host = builtins.fromJSON (builtins.readFile hostFile);
    pkgs = {
      k3s = "pkgs.k3s";
    };
    inputs = {
      disko.nixosModules.disko = "inputs.disko.nixosModules.disko";
    };
  };
in
{
  imports = map toString module.imports;
  inherit (module) config;
}
