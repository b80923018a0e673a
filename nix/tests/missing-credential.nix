# A service naming a credential nobody provides: evaluation fails.
{
  systemd.services.other.serviceConfig.LoadCredential = [ "token:API_TOKEN" "/etc/ssl/ca.pem" ];
}
