#!/usr/bin/env bash
# A private PostgreSQL that speaks TLS only over TCP, as managed services do,
# with certificates made here by openssl. Used by the TLS tests
# (tests/cli/postgres_tls.rs) and by .ci/run, which runs part of the CLI
# suite over sslmode=verify-full against it.
#
#   pg_tls_server.sh start DIR PORT   initdb in DIR, start on 127.0.0.1:PORT
#   pg_tls_server.sh stop DIR
#
# DIR then holds: ca.pem (the CA that signed the server's certificate, for
# 127.0.0.1 only), other-ca.pem (a CA the server does not use), client.pem /
# client.key (CN=certuser, a user that may log in with this certificate
# only), and sock/ (the Unix socket directory, trust for every user). The
# database `test` and the user `postgres` (trust over TLS) exist.
set -euo pipefail

action=$1
dir=$2
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
as_postgres() { runuser -u postgres -- "$@"; }

case $action in
stop)
    as_postgres "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    exit 0
    ;;
start) port=$3 ;;
*) echo "usage: $0 start DIR PORT | stop DIR" >&2; exit 2 ;;
esac

mkdir -p "$dir/sock"
cd "$dir"
ssl() { openssl "$@" 2>/dev/null; }
ssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=idem test CA" -keyout ca.key -out ca.pem
ssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=other CA" -keyout other-ca.key -out other-ca.pem
ssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout server.key -out server.csr
echo "subjectAltName=IP:127.0.0.1" >ext
ssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile ext -out server.pem
ssl req -newkey rsa:2048 -nodes -subj "/CN=certuser" -keyout client.key -out client.csr
echo "extendedKeyUsage=clientAuth" >client-ext
ssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile client-ext -out client.pem
chmod 0600 client.key

chmod 0755 "$dir"
mkdir -p "$dir/data"
chown postgres "$dir/data"
chown postgres "$dir/sock" server.key server.pem ca.pem
chmod 0600 server.key
as_postgres "$bin/initdb" -D "$dir/data" -U postgres -A trust --no-sync >/dev/null
cat >"$dir/data/pg_hba.conf" <<EOF
local all all trust
hostssl all certuser 127.0.0.1/32 cert
hostssl all all 127.0.0.1/32 trust
hostnossl all all 0.0.0.0/0 reject
EOF
as_postgres "$bin/pg_ctl" -D "$dir/data" -w -l "$dir/data/server.log" -o "-p $port -c listen_addresses=127.0.0.1 \
-c unix_socket_directories=$dir/sock -c ssl=on -c ssl_cert_file=$dir/server.pem \
-c ssl_key_file=$dir/server.key -c ssl_ca_file=$dir/ca.pem -c fsync=off \
-c synchronous_commit=off -c full_page_writes=off" start >/dev/null
psql -X -q -h "$dir/sock" -p "$port" -U postgres -d postgres \
    -c "CREATE DATABASE test" -c "CREATE USER certuser" \
    -c "GRANT ALL ON DATABASE test TO certuser" >/dev/null
psql -X -q -h "$dir/sock" -p "$port" -U postgres -d test -c "GRANT ALL ON SCHEMA public TO certuser" >/dev/null
