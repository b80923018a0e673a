# clan's own eval tests of its vars interface (written for nix-unit), run
# next to credvm's guest module: [] when every test passes. A test with
# expectedError passes when its expression throws (tryEval: the message
# is not compared — Nix 2.8 cannot catch it); the others go through
# lib.runTests.
{ fixtures }:
let
  lib = import (fixtures + "/nixpkgs-lib/lib");
  drv = name: { type = "derivation"; inherit name; outPath = "/usr"; };
  pkgs = { coreutils = drv "coreutils"; bash = drv "bash"; stdenv.hostPlatform = { isDarwin = false; system = "x86_64-linux"; }; writeScript = n: s: drv n; };
  tests = import (fixtures + "/clan-core/nixosModules/clanCore/vars/eval-tests") { inherit lib pkgs; };
  flat = lib.concatMapAttrs (name: v:
    if lib.hasPrefix "test_" name then { ${name} = v; }
    else lib.mapAttrs' (n: t: lib.nameValuePair "test_${name}_${lib.removePrefix "test_" n}" t) v) tests;
  erroring = lib.filterAttrs (_: t: t ? expectedError) flat;
  failedErrors = lib.mapAttrsToList (n: _: { name = n; expected = "an error"; result = "no error"; })
    (lib.filterAttrs (_: t: (builtins.tryEval (builtins.deepSeq t.expr t.expr)).success) erroring);
in
failedErrors ++ lib.runTests (lib.filterAttrs (_: t: !(t ? expectedError)) flat)
