# A builtins-only stand-in for the nixpkgs lib functions the nixos/ modules call, keeping mkIf and mkOverride visible.
let
  mkOverride = priority: content: {
    _type = "override";
    inherit priority content;
  };
  # Option declarations are not checked here (no nixpkgs types), only kept as data.
  anyType = {
    _type = "option-type";
  };
  typeFunction = _: typeFunction // anyType;
in
{
  inherit mkOverride;
  mkDefault = mkOverride 1000;
  mkForce = mkOverride 50;
  mkIf = condition: content: {
    _type = "if";
    inherit condition content;
  };
  mkMerge = contents: {
    _type = "merge";
    inherit contents;
  };
  mkOption = attrs: attrs // { _type = "option"; };
  mkEnableOption = description: {
    _type = "option";
    inherit description;
  };
  mkPackageOption = _pkgs: name: _extra: {
    _type = "option";
    inherit name;
  };
  literalExpression = text: { inherit text; };
  literalMD = text: { inherit text; };
  types = {
    bool = anyType;
    str = anyType;
    nonEmptyStr = anyType;
    singleLineStr = anyType;
    port = anyType;
    package = anyType;
    anything = anyType;
    ints = {
      positive = anyType;
      between = _: _: anyType;
    };
    strMatching = typeFunction;
    enum = typeFunction;
    listOf = typeFunction;
    nonEmptyListOf = typeFunction;
    attrsOf = typeFunction;
    nullOr = typeFunction;
    submodule = typeFunction;
  };
  optional = cond: value: if cond then [ value ] else [ ];
  optionals = cond: values: if cond then values else [ ];
  optionalAttrs = cond: attrs: if cond then attrs else { };
  genAttrs = names: f: builtins.listToAttrs (map (name: { inherit name; value = f name; }) names);
  mapAttrsToList = f: attrs: map (name: f name attrs.${name}) (builtins.attrNames attrs);
  hasPrefix = prefix: s: builtins.substring 0 (builtins.stringLength prefix) s == prefix;
  inherit (builtins)
    any
    attrValues
    concatLists
    concatStringsSep
    filter
    foldl'
    listToAttrs
    mapAttrs
    stringLength
    ;
}
