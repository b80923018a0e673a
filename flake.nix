{
  description = "credvm: imperative microVMs that own their secrets, delivered as systemd credentials";

  # nixpkgs is the only input. Offline (as credvm is developed) no
  # flake.lock can be made: the first `nix flake lock` online writes it.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      package = pkgs: pkgs.callPackage ./nix/package.nix { };
    in
    {
      packages = forAll (pkgs: { default = package pkgs; credvm = package pkgs; });
      overlays.default = final: prev: { credvm = package final; };
      apps = forAll (pkgs: {
        default = { type = "app"; program = "${package pkgs}/bin/credvm"; };
      });
      nixosModules = {
        # A guest's configuration: config.credvm.machine is its machine.json.
        guest = ./nix/guest.nix;
        # A host: credvm and its VMs as credvm@NAME.service.
        host = import ./nix/host.nix package;
        default = self.nixosModules.host;
      };
      # The guest module's self-check needs only lib (the tests against
      # clan's and microvm.nix's real options run offline in `make test`).
      checks = forAll (pkgs: {
        guest-module = pkgs.writeText "credvm-guest-module-check.json"
          (builtins.toJSON (import ./nix/tests/self-check.nix { inherit (nixpkgs) lib; }));
      });
      devShells = forAll (pkgs: {
        default = pkgs.mkShell {
          packages = with pkgs; [ go gopls qemu virtiofsd bubblewrap sops age nix ];
        };
      });
    };
}
