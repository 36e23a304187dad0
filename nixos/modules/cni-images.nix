# Not a module: where the CNI's images are downloaded before k3s runs, and the tool that does it
# (k3s-cni-fetch.sh), shared by k3s.nix (the tool on the host's PATH, k3s-cni-fetch.service, the
# pre-pull's imports) and k3s-containers.nix (the containers' read-only bind).
{ lib, pkgs }:
let
  dir = "/var/lib/nixos-k3s/cni-images";
in
{
  inherit dir;

  # NixOS has no /etc/containers/policy.json unless virtualisation.containers is on, and skopeo
  # refuses to copy without a policy (cmd/skopeo/main.go getPolicyContext). nixpkgs installs
  # skopeo's own default-policy.json (accept anything) into $out/etc/containers
  # (pkgs/by-name/sk/skopeo/package.nix installPhase, from passthru.policy).
  tool =
    pkgs.runCommand "nixos-k3s-cni-fetch"
      {
        nativeBuildInputs = [ pkgs.makeWrapper ];
        meta.mainProgram = "nixos-k3s-cni-fetch";
      }
      ''
        makeWrapper ${pkgs.bash}/bin/bash $out/bin/nixos-k3s-cni-fetch \
          --add-flags ${./k3s-cni-fetch.sh} \
          --set ARCHIVE_DIR ${dir} \
          --set SKOPEO_POLICY ${pkgs.skopeo}/etc/containers/default-policy.json \
          --prefix PATH : ${
            lib.makeBinPath [
              pkgs.skopeo
              pkgs.jq
              pkgs.coreutils
              pkgs.findutils
              pkgs.util-linux
            ]
          }
      '';
}
