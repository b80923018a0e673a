# The host module evaluated with stand-ins for the NixOS options it sets
# (the real ones need NixOS's modules, not in lib): what units it makes.
{ lib }:
let
  pkg = { type = "derivation"; name = "credvm"; outPath = "/nix/store/00000000000000000000000000000000-credvm"; };
  standIns = {
    options = {
      environment.systemPackages = lib.mkOption { type = lib.types.listOf lib.types.unspecified; default = [ ]; };
      systemd.tmpfiles.rules = lib.mkOption { type = lib.types.listOf lib.types.str; default = [ ]; };
      systemd.packages = lib.mkOption { type = lib.types.listOf lib.types.unspecified; default = [ ]; };
      systemd.services = lib.mkOption { type = lib.types.attrsOf lib.types.anything; default = { }; };
    };
  };
  eval = lib.evalModules {
    specialArgs.pkgs = { };
    modules = [
      standIns
      (import ../host.nix (_: pkg))
      {
        services.credvm.enable = true;
        services.credvm.vms.app-vm-01 = { flake = "github:me/infra"; autostart = true; machineKeyFile = "/etc/credstore.encrypted/app-vm-01.cred"; };
        services.credvm.vms.batch = { autostart = false; machineKeyFile = "/etc/credvm/batch.age"; };
      }
    ];
  };
in
{ inherit (eval.config.systemd) services tmpfiles; }
