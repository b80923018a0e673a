# credvm's host module: credvm installed, its VMs as credvm@NAME.service.
#
#   services.credvm.enable = true;
#   services.credvm.vms.app-vm-01 = { flake = "github:me/infra"; autostart = true; machineKeyFile = "/etc/credvm/app-vm-01.age"; };
#
# Each VM's machine key reaches its unit as the credential "age-key":
# LoadCredentialEncrypted= when the file is a systemd-creds blob (*.cred),
# else LoadCredential= from machineKeyFile (root's, 0400).
credvmPackage:
{ config, lib, pkgs, ... }:
let
  cfg = config.services.credvm;
  inherit (lib) mkOption mkEnableOption mkIf types mapAttrs' nameValuePair filterAttrs;
in
{
  options.services.credvm = {
    enable = mkEnableOption "credvm, imperative microVMs that own their secrets";
    package = mkOption {
      type = types.package;
      default = credvmPackage pkgs;
      description = "The credvm package.";
    };
    repository = mkOption {
      type = types.str;
      default = "/var/lib/credvm/repo";
      description = "The host's credvm repository (its VMs' machine files and encrypted vars).";
    };
    stateDir = mkOption {
      type = types.str;
      default = "/var/lib/microvms";
      description = "The VMs' state directories (as microvm.nix has them).";
    };
    vms = mkOption {
      default = { };
      description = "VMs credvm runs on this host, by name.";
      type = types.attrsOf (types.submodule {
        options = {
          flake = mkOption { type = types.nullOr types.str; default = null; description = "The flake whose nixosConfigurations.<name> is the guest (credvm create --flake)."; };
          autostart = mkOption { type = types.bool; default = true; description = "Start the VM at boot."; };
          machineKeyFile = mkOption { type = types.nullOr types.str; default = null; description = "The VM's own age key (credvm vars machine-key), or a systemd-creds blob of it ending in .cred."; };
        };
      });
    };
  };

  config = mkIf cfg.enable {
    environment.systemPackages = [ cfg.package ];
    systemd.tmpfiles.rules = [ "d ${cfg.stateDir} 0755 root root -" "d ${cfg.repository} 0700 root root -" ];
    systemd.packages = [ ];
    systemd.services = mapAttrs' (name: vm: nameValuePair "credvm@${name}" {
      description = "credvm VM ${name}";
      wantedBy = lib.optional vm.autostart "multi-user.target";
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      environment = { CREDVM_STATE_DIR = cfg.stateDir; CREDVM_REPO = cfg.repository; };
      serviceConfig = {
        # A VM with a flake is created from it on its first start.
        ExecStartPre = lib.optional (vm.flake != null)
          "${pkgs.runtimeShell or "/bin/sh"} -c 'test -e ${cfg.stateDir}/${name}/vm.json || exec ${cfg.package}/bin/credvm create ${name} --flake ${vm.flake}'";
        Type = "notify";
        NotifyAccess = "main";
        ExecStart = "${cfg.package}/bin/credvm run --systemd --quiet ${name}";
        KillMode = "mixed";
        Restart = "on-failure";
        NoNewPrivileges = true;
        PrivateTmp = true;
      } // lib.optionalAttrs (vm.machineKeyFile != null) (
        if lib.hasSuffix ".cred" vm.machineKeyFile
        then { LoadCredentialEncrypted = "age-key:${vm.machineKeyFile}"; }
        else { LoadCredential = "age-key:${vm.machineKeyFile}"; }
      );
    }) cfg.vms;
  };
}
