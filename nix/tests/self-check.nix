# The guest module's self-check, needing nothing but lib: a guest with one
# generator and a service, clan's and microvm.nix's options declared by
# minimal stand-ins (the real ones are tested in `make test`, offline,
# against the fixtures). The flake's checks build it with nixpkgs' lib.
{ lib }:
let
  drv = name: { type = "derivation"; inherit name; outPath = "/usr"; };
  standIns = {
    options = {
      assertions = lib.mkOption { type = lib.types.listOf lib.types.unspecified; default = [ ]; };
      warnings = lib.mkOption { type = lib.types.listOf lib.types.str; default = [ ]; };
      systemd.services = lib.mkOption { type = lib.types.attrsOf lib.types.anything; default = { }; };
      clan.core.vars.generators = lib.mkOption { type = lib.types.attrsOf lib.types.anything; default = { }; };
      microvm = lib.mkOption { type = lib.types.anything; default = { }; };
    };
  };
  eval = lib.evalModules {
    modules = [
      standIns
      ../guest.nix
      {
        clan.core.vars.generators.g = {
          script = "echo x > $out/f"; runtimeInputs = [ (drv "coreutils") ]; dependencies = [ ]; share = false; validation = null;
          prompts = { };
          files.f = { secret = true; mode = "0400"; owner = "root"; group = "root"; deploy = true; neededFor = "services"; restartUnits = [ ]; };
        };
        microvm = { hypervisor = "qemu"; vcpu = 1; mem = 512; shares = [ ]; interfaces = [ ]; volumes = [ ]; vsock.cid = null; };
        credvm.boot = { kernel = "/k"; initrd = null; };
        credvm.credentials.F.var = "g/f";
        systemd.services.app.serviceConfig.LoadCredential = [ "f:F" ];
      }
    ];
  };
  m = eval.config.credvm.machine;
in
assert m.credentials.F.var == "g/f";
assert m.vars.generators.g.runtimeInputs == [ "/usr" ];
assert m.vm.hypervisor == "qemu";
m
