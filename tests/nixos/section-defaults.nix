# Fields of the host document's sections that a nixosK3s option still gives a default (should be none).
# configuration.nix hands these sections to the modules whole; render.py fills every field, so a
# default in the module would be a second place choosing the same value. Evaluated with
# ../shared/nixlite (real nixpkgs lib and module system).
{
  kit,
  project,
  hostFile,
}:
let
  lib = import (kit + "/lib");
  host = builtins.fromJSON (builtins.readFile hostFile);
  diskoModule =
    { lib, ... }:
    {
      options.disko = lib.mkOption {
        type = lib.types.attrsOf lib.types.anything;
        default = { };
      };
    };
  system = import (kit + "/nixos/lib/eval-config.nix") {
    modules = [ (project + "/nixos/configuration.nix") ];
    specialArgs = {
      inherit host;
      inputs.disko.nixosModules.disko = diskoModule;
    };
  };
  options = system.options.nixosK3s;
  isOption = x: builtins.isAttrs x && (x._type or "") == "option";

  # Paths of the document's fields whose option declares a default.
  defaulted =
    path: opts: doc:
    lib.concatLists (
      lib.mapAttrsToList (
        field: value:
        let
          opt = opts.${field} or null;
        in
        if opt == null then
          [ ]
        else if isOption opt then
          lib.optional (opt ? default) (lib.concatStringsSep "." (path ++ [ field ]))
        else
          defaulted (path ++ [ field ]) opt value
      ) doc
    );

  # A module's own switch (`enable`, lib.mkEnableOption) stays off by default, as NixOS modules'
  # do: importing a module must not turn it on.
  section = name: lib.remove "${name}.enable" (defaulted [ name ] options.${name} host.${name});

  containerOptions = options.k3sContainers.containers.type.nestedTypes.elemType.getSubOptions [ ];
in
section "k3s"
++ section "firewall"
++ section "tailscale"
++ section "persistence"
++ lib.concatMap (c: defaulted [ "containers" c.name ] containerOptions (removeAttrs c [ "name" ])) host.containers
