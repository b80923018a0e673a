# A credential no service uses, and an encrypted one credvm cannot send.
{
  credvm.credentials.UNUSED.value = "x";
  systemd.services.enc.serviceConfig.LoadCredentialEncrypted = [ "db:/etc/credstore.encrypted/db" ];
  systemd.services.imp.serviceConfig.ImportCredential = [ "API_*" ];
}
