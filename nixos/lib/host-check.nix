# Validates host data against host.schema.json with builtins only; returns error strings naming each bad field.
{ schema, host }:
let
  inherit (builtins)
    all
    any
    attrNames
    concatLists
    concatMap
    concatStringsSep
    elem
    elemAt
    filter
    genList
    head
    isAttrs
    isBool
    isFloat
    isInt
    isList
    isNull
    isString
    length
    split
    toJSON
    ;

  defs = schema."$defs" or { };

  refName =
    ref:
    let
      parts = filter isString (split "/" ref);
    in
    elemAt parts (length parts - 1);

  resolve = s: if s ? "$ref" then defs.${refName s."$ref"} else s;

  jsonType =
    v:
    if isNull v then
      "null"
    else if isBool v then
      "boolean"
    else if isInt v then
      "integer"
    else if isFloat v then
      "number"
    else if isString v then
      "string"
    else if isList v then
      "array"
    else
      "object";

  typeMatches = t: v: jsonType v == t || (t == "number" && isInt v);

  when = cond: msg: if cond then [ msg ] else [ ];

  checkAnyOf =
    path: alternatives: v:
    let
      results = map (alt: check path alt v) alternatives;
    in
    if any (r: r == [ ]) results then
      [ ]
    else
      [
        "${path}: ${toJSON v} matches none of the allowed shapes (${concatStringsSep "; " (map head results)})"
      ];

  checkItems =
    path: s: v:
    concatLists (genList (i: check "${path}[${toString i}]" s (elemAt v i)) (length v));

  checkObject =
    path: s: v:
    let
      props = s.properties or { };
      patternSchemas = attrValuesOf (s.patternProperties or { });
      additional = s.additionalProperties or true;
      known = filter (k: props ? ${k}) (attrNames v);
      extra = filter (k: !(props ? ${k})) (attrNames v);
      checkExtra =
        k:
        if additional == false then
          [ "${path}.${k}: unknown field" ]
        else if isAttrs additional then
          check "${path}.${k}" additional v.${k}
        else if patternSchemas != [ ] then
          check "${path}.${k}" (head patternSchemas) v.${k}
        else
          [ ];
    in
    map (k: "${path}.${k}: missing") (filter (k: !(v ? ${k})) (s.required or [ ]))
    ++ concatMap (k: check "${path}.${k}" props.${k} v.${k}) known
    ++ concatMap checkExtra extra;

  attrValuesOf = set: map (k: set.${k}) (attrNames set);

  check =
    path: schemaNode: v:
    let
      s = resolve schemaNode;
    in
    if s ? anyOf then
      checkAnyOf path s.anyOf v
    else if s ? type && !(typeMatches s.type v) then
      [ "${path}: expected ${s.type}, got ${jsonType v}" ]
    else
      concatLists [
        (when (s ? const && v != s.const) "${path}: must be ${toJSON s.const}, got ${toJSON v}")
        (when (
          s ? enum && !(elem v s.enum)
        ) "${path}: ${toJSON v} is not one of ${concatStringsSep ", " (map toJSON s.enum)}")
        (when (s ? minimum && v < s.minimum) "${path}: ${toJSON v} is below ${toJSON s.minimum}")
        (when (s ? maximum && v > s.maximum) "${path}: ${toJSON v} is above ${toJSON s.maximum}")
        (when (
          s ? minItems && length v < s.minItems
        ) "${path}: needs at least ${toString s.minItems} item(s)")
        (if s ? items && isList v then checkItems path s.items v else [ ])
        (if isAttrs v then checkObject path s v else [ ])
      ];

  errors = if isAttrs host then check "host" schema host else [ "host: expected object" ];
in
assert all isString errors;
errors
