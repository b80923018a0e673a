# The source document's guest, declared for credvm: its credentials, and —
# for the tests, which boot it on QEMU (cloud-hypervisor and vhost-vsock
# need KVM) — the hypervisor, the test images and no vsock.
{ lib, ... }:
{
  credvm.credentials = {
    API_KEY.var = "app-vm-secrets/api-key";
    DB_PASSWORD.var = "app-vm-secrets/db-password";
    JWT_SECRET.var = "app-vm-secrets/jwt-secret";
    ENVIRONMENT.value = "production";
  };
  credvm.boot = {
    kernel = "/boot/vmlinuz";
    initrd = "/boot/initrd.img";
    kernelParams = [ "console=ttyS0" ];
  };
}
