# Evaluates a guest configuration with credvm's guest module through the
# real option declarations — nixpkgs lib's module system, clan's vars
# interface, microvm.nix's options — and stubs of the few NixOS options
# they touch, offline: nothing from nixpkgs but lib, no store builds.
#
#   nix-instantiate --eval --strict --json --expr \
#     'import ./nix/tests/eval.nix { fixtures = ../shared/fixtures/nix; modules = [ … ]; }'
#
# prints config.credvm.machine (machine.json); attr = "warnings" prints
# the warnings instead.
{ fixtures, modules, attr ? "machine" }:
let
  lib = import (fixtures + "/nixpkgs-lib/lib");
  # Stub packages: outPath /usr, so ${pkgs.openssl}/bin is Debian's.
  drv = name: { type = "derivation"; inherit name; outPath = "/usr"; };
  pkgs = {
    coreutils = drv "coreutils";
    openssl = drv "openssl";
    bash = drv "bash";
    stdenv.hostPlatform = { isDarwin = false; system = "x86_64-linux"; };
    system = "x86_64-linux";
  };
  inputs.microvm.nixosModules.microvm = fixtures + "/microvm.nix/nixos-modules/microvm/options.nix";
  stubs = import ./stubs.nix {
    inherit lib pkgs drv;
    clanVarsInterface = fixtures + "/clan-core/nixosModules/clanCore/vars/interface.nix";
  };
  eval = lib.evalModules {
    specialArgs = { inherit pkgs inputs; };
    modules = [ stubs ../guest.nix { _module.args.pkgs = pkgs; } ] ++ modules;
  };
in
if attr == "machine" then eval.config.credvm.machine
else eval.config.${attr}
