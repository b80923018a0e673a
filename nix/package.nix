# credvm, built with buildGoModule. vendorHash is pinned and kept current
# by `make nix-vendor-hash` (nix hash path over `go mod vendor`).
{ lib, buildGoModule }:
buildGoModule {
  pname = "credvm";
  version = "0.16.0";
  src = lib.cleanSource ../.;
  vendorHash = import ./vendor-hash.nix;
  subPackages = [ "cmd/credvm" ];
  env.CGO_ENABLED = 0;
  ldflags = [ "-s" "-w" ];
  # The tests boot guests and need root: they run in `make test`, not here.
  doCheck = false;
  meta = {
    description = "Imperative microVMs that own their secrets, delivered as systemd credentials";
    license = lib.licenses.mit;
    mainProgram = "credvm";
  };
}
