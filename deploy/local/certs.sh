#!/usr/bin/env bash
# Makes a throwaway certificate authority and one server certificate for 127.0.0.1/localhost,
# for the secure modes of kafka.sh and redis.sh (docs/security.md). For tests and local
# trials only: the CA key lies beside the certificates, unprotected. Never commit the output.
#
#   certs.sh DIR [DAYS]
#
# Writes into DIR (created, mode 700):
#   ca.pem          the CA certificate: clients trust it (STREAMREC_KAFKA_SSL_CAFILE,
#                   STREAMREC_REDIS_SSL_CAFILE), Kafka's truststore, Redis's --tls-ca-cert-file
#   ca.key          the CA's private key
#   server.pem      the server certificate (SAN DNS:localhost, IP:127.0.0.1), signed by ca.pem
#   server.key      its private key (PKCS#8, unencrypted, mode 600)
#   server.p12      server.key + server.pem + ca.pem as a PKCS#12 keystore (Kafka's keystore)
#   server.p12.password   the keystore's random password (mode 600)
set -euo pipefail

dir="${1:?usage: certs.sh DIR [DAYS]}"
days="${2:-2}"
command -v openssl >/dev/null || { echo "certs.sh: openssl is required" >&2; exit 1; }
mkdir -p "$dir"
chmod 700 "$dir"
cd "$dir"
umask 077

# EC P-256: key generation takes milliseconds where RSA takes seconds on a busy machine.
openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout ca.key -out ca.pem -days "$days" -subj "/CN=streamrec throwaway CA" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout server.key -out server.csr -subj "/CN=localhost" 2>/dev/null
printf '%s\n' "basicConstraints=CA:FALSE" \
  "keyUsage=critical,digitalSignature,keyEncipherment" \
  "extendedKeyUsage=serverAuth,clientAuth" \
  "subjectAltName=DNS:localhost,IP:127.0.0.1" > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
  -out server.pem -days "$days" -extfile server.ext 2>/dev/null
openssl rand -hex 16 > server.p12.password
openssl pkcs12 -export -name server -in server.pem -inkey server.key -certfile ca.pem \
  -out server.p12 -passout "file:server.p12.password"
rm -f server.csr server.ext ca.srl
chmod 644 ca.pem server.pem
echo "certs.sh: CA and server certificate for localhost/127.0.0.1 in $dir (valid $days days)" >&2
