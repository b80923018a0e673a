# credvm's guest module: the guest's NixOS configuration is the machine.
#
# Imported next to clan's vars module and microvm.nix's module, it reads
#   config.clan.core.vars.generators   (clan's vars interface)
#   config.microvm.{hypervisor,vcpu,mem,shares,interfaces,volumes,vsock.cid,kernelParams}
#   config.systemd.services.<name>.serviceConfig.{LoadCredential,ImportCredential,LoadCredentialEncrypted}
# and exposes config.credvm.machine: credvm's machine.json, which
# `credvm create NAME --flake REF` writes. It checks the guest against
# itself: every LoadCredential= of a service that names a credential (not
# an absolute path) must be one credvm.credentials provides, every
# ImportCredential= glob must match one — else evaluating credvm.machine
# fails naming the service and the credential (and so does the system's
# assertions); credentials no service uses, and LoadCredentialEncrypted=
# (credvm sends no encrypted blobs), are warnings.
{ config, lib, options, ... }:
let
  inherit (lib) mkOption types mapAttrs filterAttrs attrNames concatMap optionalAttrs;
  cfg = config.credvm;
  mv = config.microvm;
  generators = config.clan.core.vars.generators or { };

  asList = v: if v == null then [ ] else if builtins.isList v then v else [ v ];

  # LoadCredential=ID[:SOURCE]: a SOURCE that is not an absolute path is
  # a credential's name (systemd looks it up among the system's).
  wanted = concatMap (svc:
    let sc = config.systemd.services.${svc}.serviceConfig or { };
    in map (e:
      let parts = lib.splitString ":" e;
          id = builtins.head parts;
          source = if builtins.length parts > 1 then lib.concatStringsSep ":" (builtins.tail parts) else id;
      in { inherit svc e source; path = lib.hasPrefix "/" source; }) (asList (sc.LoadCredential or null))
  ) (attrNames (config.systemd.services or { }));
  importing = concatMap (svc:
    map (glob: { inherit svc glob; }) (asList ((config.systemd.services.${svc}.serviceConfig or { }).ImportCredential or null))
  ) (attrNames (config.systemd.services or { }));
  encrypted = concatMap (svc:
    map (e: { inherit svc e; }) (asList ((config.systemd.services.${svc}.serviceConfig or { }).LoadCredentialEncrypted or null))
  ) (attrNames (config.systemd.services or { }));

  provided = attrNames cfg.credentials;
  globMatches = glob: name: builtins.match (lib.replaceStrings [ "*" "?" "." ] [ ".*" "." "\\." ] glob) name != null;

  missing = builtins.filter (w: !w.path && !(builtins.elem w.source provided)) wanted;
  unmatched = builtins.filter (i: !(lib.any (globMatches i.glob) provided)) importing;
  used = name: lib.any (w: w.source == name) wanted || lib.any (i: globMatches i.glob name) importing;
  unused = builtins.filter (n: !(used n)) provided;

  errors =
    map (w: "systemd.services.${w.svc}: LoadCredential=${w.e} names the credential ${w.source}, which credvm.credentials does not provide (it provides: ${if provided == [ ] then "none" else lib.concatStringsSep ", " provided}): add credvm.credentials.${w.source}") missing
    ++ map (i: "systemd.services.${i.svc}: ImportCredential=${i.glob} matches no credential of credvm.credentials (${if provided == [ ] then "none" else lib.concatStringsSep ", " provided})") unmatched;
  warnings =
    map (n: "credvm.credentials.${n}: no service of this guest loads it (LoadCredential=/ImportCredential=)") unused
    ++ map (x: "systemd.services.${x.svc}: LoadCredentialEncrypted=${x.e}: credvm sends credentials in the clear over a private channel, not encrypted blobs: this one cannot be satisfied") encrypted;

  # clan's generator → machine.json's (camelCase, as clan writes them).
  generator = name: g: {
    script = if builtins.isPath g.script then builtins.readFile g.script else g.script;
    files = mapAttrs (_: f: {
      secret = f.secret;
      inherit (f) mode owner group deploy neededFor restartUnits;
    }) g.files;
    prompts = mapAttrs (_: p: { inherit (p) description type persist; }) g.prompts;
    dependencies = g.dependencies;
    share = g.share;
    # Store paths: an absolute directory puts its bin/ on the script's PATH.
    runtimeInputs = map toString g.runtimeInputs;
  } // optionalAttrs (g.validation != null) { inherit (g) validation; };

  hypervisors = [ "qemu" "cloud-hypervisor" "firecracker" ];
  interface = i:
    if i.type == "user" then { type = "user"; inherit (i) mac; }
    else if i.type == "tap" then { type = "tap"; inherit (i) id mac; } // optionalAttrs (i.bridge != null) { inherit (i) bridge; }
    else if i.type == "bridge" then { type = "tap"; inherit (i) id mac bridge; }
    else if i.type == "macvtap" then { type = "macvtap"; inherit (i) id mac; link = i.macvtap.link; }
    else throw "credvm: microvm.interfaces: type ${i.type} is not one credvm runs (user, tap, bridge, macvtap)";

  vm = {
    hypervisor =
      if builtins.elem mv.hypervisor hypervisors then mv.hypervisor
      else throw "credvm: microvm.hypervisor = \"${mv.hypervisor}\" is not one credvm runs (${lib.concatStringsSep ", " hypervisors})";
    inherit (mv) vcpu mem;
    kernel = toString cfg.boot.kernel;
    cmdline = lib.concatStringsSep " " cfg.boot.kernelParams;
    shares = map (s: { inherit (s) tag source proto; read_only = s.readOnly or false; }) mv.shares;
    interfaces = map interface mv.interfaces;
    volumes = map (v: { inherit (v) image size; fs = v.fsType; } // optionalAttrs (v.label != null) { inherit (v) label; }) mv.volumes;
  } // optionalAttrs (cfg.boot.initrd != null) { initrd = toString cfg.boot.initrd; }
    // optionalAttrs ((mv.vsock.cid or null) != null) { vsock_cid = mv.vsock.cid; }
    // optionalAttrs (cfg.vm != { }) cfg.vm;

  credential = name: c:
    let set = filterAttrs (_: v: v != null) c;
    in if builtins.length (attrNames set) != 1
      then throw "credvm.credentials.${name}: give exactly one of var = \"generator/file\", value = \"…\" or file = \"/path\""
      else set;

  machine = {
    vm = vm;
    vars.generators = mapAttrs generator generators;
    credentials = mapAttrs credential cfg.credentials;
  };
in
{
  options.credvm = {
    credentials = mkOption {
      description = "The credentials credvm passes the guest's systemd, by name.";
      default = { };
      type = types.attrsOf (types.submodule {
        options = {
          var = mkOption { type = types.nullOr types.str; default = null; description = "A var of this machine: \"generator/file\"."; };
          value = mkOption { type = types.nullOr types.str; default = null; description = "A literal value (never a secret: it is in the Nix store)."; };
          file = mkOption { type = types.nullOr types.str; default = null; description = "A file on the host, read at start."; };
        };
      });
    };
    boot = {
      kernel = mkOption {
        description = "The kernel credvm boots (a derivation's output or a path).";
        type = types.either types.package types.str;
        default = "${mv.kernel}/${if mv.hypervisor == "qemu" then "bzImage" else "vmlinux"}";
        defaultText = "microvm.kernel's bzImage (QEMU) or vmlinux";
      };
      initrd = mkOption {
        description = "The initrd credvm boots (null: none).";
        type = types.nullOr (types.either types.package types.str);
        default = mv.initrdPath;
        defaultText = "microvm.initrdPath";
      };
      kernelParams = mkOption {
        description = "The guest kernel's command line (never a secret).";
        type = types.listOf types.str;
        default = if options.microvm ? kernelParams && options.microvm.kernelParams.isDefined then mv.kernelParams else [ ];
        defaultText = "microvm.kernelParams";
      };
    };
    vm = mkOption {
      description = "More of machine.json's [vm] (credvm's own keys: transport, guest_systemd, user, ready, …).";
      type = types.attrsOf types.anything;
      default = { };
    };
    machine = mkOption {
      description = "credvm's machine.json for this guest (read-only; credvm create --flake writes it).";
      type = types.anything;
      readOnly = true;
    };
  };

  config = {
    credvm.machine =
      if errors != [ ] then throw ("credvm: " + lib.concatStringsSep "; " errors) else machine;
    assertions = map (m: { assertion = false; message = "credvm: " + m; }) errors;
    warnings = map (m: "credvm: " + m) warnings;
  };
}
