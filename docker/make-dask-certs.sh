#!/usr/bin/env bash
# Make the TLS material of the compose Dask cluster: a private CA and one certificate + key each for
# the scheduler, the workers and the clients (the Airflow services), signed by that CA.
#
#   docker/make-dask-certs.sh DIR [DAYS]      then: export DASK_TLS_DIR=DIR
#
# Dask's TLS is mutual: every side presents a certificate signed by the CA, so a process without
# one cannot join the cluster or submit work. Keys are 0600; the containers run as uid 50000
# (the official Airflow image's `airflow` user): on a Linux Docker host, `sudo chown -R 50000 DIR`.
# The CA key stays in DIR/ca-key.pem: keep it off the cluster's hosts once the certificates exist.
set -euo pipefail
dir=${1:?usage: make-dask-certs.sh DIR [DAYS]}
days=${2:-365}
mkdir -p "$dir"
cd "$dir"
umask 077
openssl req -x509 -newkey rsa:3072 -nodes -days "$days" -subj "/CN=leptonflow dask CA" \
  -keyout ca-key.pem -out ca.pem 2>/dev/null
for name in scheduler worker client; do
  openssl req -newkey rsa:3072 -nodes -subj "/CN=leptonflow dask $name" \
    -keyout "$name-key.pem" -out "$name.csr" 2>/dev/null
  printf 'subjectAltName=DNS:dask-scheduler,DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' \
    > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days "$days" \
    -extfile "$name.ext" -out "$name.pem" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
done
rm -f ca.srl
chmod 0644 ca.pem scheduler.pem worker.pem client.pem
echo "Dask TLS material in $dir: ca.pem, {scheduler,worker,client}{.pem,-key.pem}"
