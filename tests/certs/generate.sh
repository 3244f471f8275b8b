#!/bin/sh
# Regenerates the TEST-ONLY certificates in this directory (never use them for anything real):
# a CA and a server certificate for IP 127.0.0.1 and DNS localhost, EC P-256, valid 100 years.
# Run from anywhere: sh tests/certs/generate.sh
set -eu
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Test CA: self-signed, CA:TRUE, may only sign certificates.
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/ca.key"
openssl req -x509 -new -key "$tmp/ca.key" -sha256 -days 36500 \
    -subj "/CN=ringway test CA (test only)" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" \
    -out ca.pem

# Server key and certificate for 127.0.0.1 / localhost, signed by the test CA.
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out server.key
openssl req -new -key server.key -subj "/CN=localhost" -out "$tmp/server.csr"
cat > "$tmp/server.ext" <<'EXT'
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
EXT
openssl x509 -req -in "$tmp/server.csr" -CA ca.pem -CAkey "$tmp/ca.key" -CAcreateserial \
    -CAserial "$tmp/ca.srl" -sha256 -days 36500 -extfile "$tmp/server.ext" -out "$tmp/server.crt"

# server.pem is the chain the server presents: its certificate, then the CA.
cat "$tmp/server.crt" ca.pem > server.pem
chmod 644 server.key ca.pem server.pem
# The CA key is discarded on purpose: nothing else can ever be signed by this CA.
