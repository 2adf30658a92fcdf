#!/bin/sh
# Make the fleet's secrets once, as files: `deploy/fleet-secrets.sh DIR [HOSTNAME...]`.
# DIR gets the shared identity every gateway replica mounts (TLS CA and certificate, SSH host
# key, SSH user CA, secret_key), the bootstrap admin token, agent dc1's secret and the
# PostgreSQL password with the store URL that uses it. Existing files are kept, so running it
# again never changes an identity clients already trust. HOSTNAMEs are added to the
# certificate beside localhost, gateway-1, gateway-2 and the Kubernetes service names.
# Needs openssl and ssh-keygen. The directory is 0700; the files are 0644 because compose
# mounts them into containers that run as another user (uid 10001).
set -eu
dir=${1:?usage: fleet-secrets.sh DIR [HOSTNAME...]}
shift
mkdir -p "$dir"
chmod 700 "$dir"
cd "$dir"

token() { openssl rand -base64 48 | tr '+/' '-_' | tr -d '=\n' | cut -c1-"$1"; }
keep() { test -s "$1" && echo "kept $dir/$1" >&2; }

keep secret_key || openssl rand -base64 32 >secret_key
keep admin_token || printf 'wgt_%s\n' "$(token 43)" >admin_token
keep agent_dc1 || token 43 >agent_dc1
if ! keep db_password; then
  token 32 >db_password
  rm -f store_url
fi
keep store_url || printf 'postgresql+psycopg://wardgate:%s@db:5432/wardgate\n' "$(cat db_password)" >store_url
keep ssh_host_ed25519_key || ssh-keygen -q -t ed25519 -N '' -C wardgate-host -f ssh_host_ed25519_key
keep ssh_user_ca_ed25519_key || ssh-keygen -q -t ed25519 -N '' -C wardgate-user-ca -f ssh_user_ca_ed25519_key

if ! keep ca.crt; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj '/CN=Wardgate fleet CA' -keyout ca.key -out ca.crt \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
  rm -f tls.crt
fi
if ! keep tls.crt; then
  sans="DNS:localhost,IP:127.0.0.1,DNS:gateway-1,DNS:gateway-2,DNS:wardgate,DNS:wardgate-agents"
  for host in "$@"; do sans="$sans,DNS:$host"; done
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj '/CN=wardgate' \
    -keyout tls.key -out tls.csr 2>/dev/null
  printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\n' "$sans" >tls.ext
  openssl x509 -req -in tls.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 825 \
    -extfile tls.ext -out tls.crt 2>/dev/null
  rm -f tls.csr tls.ext ca.srl
fi
chmod 644 ./*
chmod 600 ca.key  # signs certificates; no container needs it
echo "fleet secrets in $dir (CA $(openssl x509 -in ca.crt -noout -fingerprint -sha256 | cut -d= -f2))" >&2
