# Stubs of the few NixOS options credvm's guest module and clan's vars
# interface touch, so that a guest configuration evaluates with nixpkgs'
# lib alone: offline, no store builds. Shared by eval.nix and e2e's test
# flake (e2e/flake_test.go).
#
#   drv            makes a stub derivation (outPath /usr)
#   clanVarsInterface  clan-core's nixosModules/clanCore/vars/interface.nix
{ lib, pkgs, drv, clanVarsInterface }:
{
  options = {
    assertions = lib.mkOption { type = lib.types.listOf lib.types.unspecified; default = [ ]; };
    warnings = lib.mkOption { type = lib.types.listOf lib.types.str; default = [ ]; };
    networking.hostName = lib.mkOption { type = lib.types.str; default = "nixos"; };
    boot.kernelPackages = lib.mkOption { type = lib.types.attrs; default = { kernel = drv "linux"; }; };
    system.build = lib.mkOption { type = lib.types.lazyAttrsOf lib.types.unspecified; default = { }; };
    system.stateVersion = lib.mkOption { type = lib.types.str; default = "24.05"; };
    systemd.services = lib.mkOption {
      default = { };
      type = lib.types.attrsOf (lib.types.submodule {
        freeformType = lib.types.attrsOf lib.types.unspecified;
        options.serviceConfig = lib.mkOption { type = lib.types.attrsOf lib.types.unspecified; default = { }; };
      });
    };
    clan.core.vars = lib.mkOption {
      default = { };
      type = lib.types.submoduleWith {
        modules = [ clanVarsInterface { inherit pkgs; machineName = "app-vm-01"; } ];
      };
    };
  };
}
