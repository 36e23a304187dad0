# Every NixOS option path the project's modules set for one host, and the files that declare it.
# Evaluated with ../shared/nixlite (real nixpkgs lib and modules, stubs for the rest). Each
# module file of nixos/ is called with the host's final configuration, and what it returns
# under `config` (mkIf conditions decided, mkMerge/mkForce unwrapped) is walked alongside the
# evaluated `options` tree: every option reached is reported with its declaring files, so a
# test can tell a real nixpkgs module's option from a kit stub's. Containers' own
# configurations are walked against a container evaluation, as nixos-containers builds it.
{
  kit,
  project,
  hostFile,
}:
let
  lib = import (kit + "/lib");
  nixosDir = toString project + "/nixos/";
  fromProject = file: builtins.isPath file && lib.hasPrefix nixosDir (toString file);

  diskoStub =
    { lib, ... }:
    {
      options.disko = lib.mkOption {
        type = lib.types.attrsOf lib.types.anything;
        default = { };
      };
    };
  host = builtins.fromJSON (builtins.readFile hostFile);
  # Declarations from flake inputs other than nixpkgs are labelled as such, not as ours.
  diskoModule = {
    _file = "flake-input:disko";
    imports = [ diskoStub ];
  };
  inputs = {
    disko.nixosModules = {
      disko = diskoModule;
      default = diskoModule;
    };
    self.outPath = project + "/nixos";
  };
  specialArgs = { inherit host inputs; };

  evalWith =
    modules:
    import (kit + "/nixos/lib/eval-config.nix") {
      inherit modules specialArgs;
    };

  # mkIf / mkMerge / mkForce / mkOrder as the module system resolves them.
  unwrap =
    v:
    if builtins.isAttrs v && v ? _type then
      if v._type == "if" then
        (if v.condition then unwrap v.content else { })
      else if v._type == "override" || v._type == "order" then
        unwrap v.content
      else if v._type == "merge" then
        lib.foldl' lib.recursiveUpdate { } (map unwrap v.contents)
      else
        v
    else
      v;

  isOption = x: builtins.isAttrs x && (x._type or "") == "option";
  isTree = v: builtins.isAttrs v && !(lib.isDerivation v) && !(v ? _type);

  leaves =
    prefix: v:
    let
      u = unwrap v;
    in
    if isTree u && u != { } then
      lib.concatLists (lib.mapAttrsToList (n: w: leaves (prefix ++ [ n ]) w) u)
    else
      [ prefix ];

  # Walk a module's config value and the options tree together.
  walk =
    options: prefix: value:
    let
      v = unwrap value;
    in
    if isOption options then
      [
        {
          path = prefix;
          declarations = map toString options.declarations;
          leaves = leaves prefix v;
        }
      ]
    else if isTree v then
      lib.concatLists (
        lib.mapAttrsToList (
          n: w:
          if builtins.isAttrs options && options ? ${n} then
            walk options.${n} (prefix ++ [ n ]) w
          else
            [
              {
                path = prefix ++ [ n ];
                declarations = [ ];
                leaves = leaves (prefix ++ [ n ]) w;
              }
            ]
        ) v
      )
    else
      [ ];

  # The module files a module imports from nixos/, with what each returns.
  moduleArgs =
    system:
    system._module.args
    // system._module.specialArgs
    // {
      inherit lib;
      inherit (system) config options;
    };
  called =
    args: m:
    let
      raw = if builtins.isFunction m then m args else m;
    in
    raw;
  configOf =
    r:
    if r ? config || r ? options then
      r.config or { }
    else
      removeAttrs r [
        "imports"
        "_file"
        "key"
        "meta"
        "disabledModules"
      ];

  filesFrom =
    args: file:
    let
      r = called args (import file);
      subFiles = builtins.filter fromProject (r.imports or [ ]);
    in
    [
      {
        inherit file;
        config = configOf r;
      }
    ]
    ++ lib.concatMap (filesFrom args) subFiles;

  reportOf =
    system: modules:
    lib.concatMap (
      m:
      map (entry: entry // { file = lib.removePrefix nixosDir (toString m.file); }) (
        walk system.options [ ] m.config
      )
    ) modules;

  configurationFile = project + "/nixos/configuration.nix";
  system = evalWith [ configurationFile ];
  hostModules = filesFrom (moduleArgs system) configurationFile;

  containersFile = project + "/nixos/modules/k3s-containers.nix";
  containerDefs = lib.foldl' (a: b: a // b) { } (
    map (m: unwrap ((unwrap m.config).containers or { })) (
      builtins.filter (m: m.file == containersFile) hostModules
    )
  );

  containerReport =
    name: c:
    let
      containerModule = {
        _file = toString containersFile;
        imports = [ (unwrap c).config ];
      };
      inner = evalWith [
        containerModule
        {
          boot.isNspawnContainer = true;
          networking.hostName = lib.mkDefault name;
          networking.useDHCP = false;
        }
      ];
      args = moduleArgs inner;
      own = called args (unwrap c).config;
    in
    reportOf inner (
      [
        {
          file = containersFile;
          config = configOf own;
        }
      ]
      ++ lib.concatMap (filesFrom args) (builtins.filter fromProject (own.imports or [ ]))
    );
in
{
  host = reportOf system hostModules;
  containers = lib.mapAttrs containerReport containerDefs;
}
