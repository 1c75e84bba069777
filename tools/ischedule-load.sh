#!/bin/sh
# iSchedule receiver throughput and free/busy latency on loopback: one `imipd run` serving
# b.test over HTTPS (a test CA made here), the load client's public key exchanged out of band
# ([ischedule.private_keys]), a fresh data dir; then imipd-load's ischedule mode.
#
#   tools/ischedule-load.sh [TARGET_DIR]     (default: target/release)
#
# Environment: REQUESTS (default 10000), CONNECTIONS (default 8), NEW_REQUESTS (default 400),
# FB_REQUESTS (default 500). Every run is bounded by its count and by --timeout; the daemon is
# stopped by its PID at the end; everything is written under a temporary directory.
set -eu
bin=${1:-target/release}
REQUESTS=${REQUESTS:-10000}
CONNECTIONS=${CONNECTIONS:-8}
NEW_REQUESTS=${NEW_REQUESTS:-400}
FB_REQUESTS=${FB_REQUESTS:-500}
umask 077
dir=$(mktemp -d)
pid=
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    rm -rf "$dir"
}
trap cleanup EXIT INT TERM
cd "$dir"
q() { "$@" >/dev/null 2>&1; }
# Test CA and the receiver's certificate (RSA-2048, as in tests/ischedule.rs).
q openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 \
    -subj "/CN=load test CA" -addext basicConstraints=critical,CA:TRUE \
    -addext keyUsage=critical,keyCertSign,cRLSign
printf 'subjectAltName=DNS:cal.b.test\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' >ext
q openssl req -new -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj /CN=cal.b.test
q openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem \
    -days 2 -extfile ext
# The sender's DKIM key (a.test, selector ischedule) and its public half for the receiver.
q openssl genrsa -out signer.pem 2048
q openssl rsa -in signer.pem -pubout -out signer.pub
cat >imipd.toml <<EOF
data_dir = "$dir/data"
local_domains = ["b.test"]
[milter]
enabled = false
[lmtp]
enabled = false
[dns]
nameservers = ["127.0.0.1:9"]
timeout_secs = 1
[outbound]
transport = "outbox:$dir/outbox"
[ischedule]
listen = "127.0.0.1:0"
tls_cert = "$dir/server.pem"
tls_key = "$dir/server.key"
[ischedule.private_keys]
"a.test:ischedule" = "$dir/signer.pub"
EOF
"$OLDPWD/$bin/imipd" --config imipd.toml run >daemon.out 2>daemon.log &
pid=$!
i=0
while ! grep -q '"control"' daemon.out 2>/dev/null; do
    i=$((i + 1))
    if [ $i -gt 100 ] || ! kill -0 "$pid" 2>/dev/null; then
        echo "imipd did not start:" >&2
        cat daemon.log >&2
        exit 1
    fi
    sleep 0.1
done
target=$(grep '"ischedule"' daemon.out | sed -n 's/.*"address":"\(inet:\)\{0,1\}\([^"]*\)".*/\2/p')
[ -n "$target" ] || { echo "no ischedule listening line" >&2; cat daemon.out >&2; exit 1; }
echo "# daemon pid $pid at $target; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
load() {
    "$OLDPWD/$bin/imipd-load" ischedule --target "$target" --host cal.b.test --ca ca.pem \
        --key signer.pem --domain a.test --originator alice@a.test --recipient bob@b.test \
        --timeout 300 "$@"
}
# Free/busy first, against an empty calendar, then again after the POST load.
load --kind freebusy --requests 50 --connections 1 >/dev/null  # warm-up
load --kind freebusy --requests "$FB_REQUESTS" --connections 1
load --kind freebusy --requests "$NEW_REQUESTS" --connections 1 --new-connection
load --kind request --requests "$REQUESTS" --connections "$CONNECTIONS"
echo "# load average: $(cut -d' ' -f1-3 /proc/loadavg)"
load --kind request --requests "$NEW_REQUESTS" --connections 1 --new-connection
load --kind request --requests "$NEW_REQUESTS" --connections "$CONNECTIONS" --new-connection
load --kind freebusy --requests "$FB_REQUESTS" --connections 1
echo "# load average: $(cut -d' ' -f1-3 /proc/loadavg)"
