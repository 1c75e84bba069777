#!/bin/sh
# iSchedule receiver throughput and free/busy latency on loopback: one `imipd run` serving
# b.test over HTTPS (a test CA made here), the load client's public key exchanged out of band
# ([ischedule.private_keys]), a fresh data dir; then imipd-load's ischedule mode.
#
#   tools/ischedule-load.sh [TARGET_DIR]     (default: target/release)
#
# Environment: REQUESTS (default 10000), CONNECTIONS (default 8), NEW_REQUESTS (default 400),
# FB_REQUESTS (default 500); PERF_DATA=FILE records the daemon with `perf record` during the
# kept-alive POST load (PERF_ARGS: its options, default -g); PERF_STAT=1 counts the daemon's
# flush syscalls and context switches during that load instead. Every run is bounded by its
# count and by --timeout; the daemon is stopped by its PID at the end; everything is written
# under a temporary directory.
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
[metrics]
listen = "127.0.0.1:0"
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
metrics=$(grep '"metrics"' daemon.out | sed -n 's/.*"address":"\(inet:\)\{0,1\}\([^"]*\)".*/\2/p')
commits() {
    # Store commits (flush waits) so far: count and total seconds, from /metrics.
    curl -s "http://$metrics/metrics" | awk '/^imipd_store_commit_seconds_(count|sum)/ {printf "%s=%s ", $1, $2} END {print ""}'
}
echo "# daemon pid $pid at $target; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
load() {
    "$OLDPWD/$bin/imipd-load" ischedule --target "$target" --host cal.b.test --ca ca.pem \
        --key signer.pem --domain a.test --originator alice@a.test --recipient bob@b.test \
        --timeout 300 "$@"
}
# Free/busy first, against an empty calendar, then again after the POST load.
load --kind freebusy --requests 50 --connections 1 >/dev/null  # warm-up
echo "# commits before the POST load: $(commits)"
load --kind freebusy --requests "$FB_REQUESTS" --connections 1
load --kind freebusy --requests "$NEW_REQUESTS" --connections 1 --new-connection
perf_pid=
if [ -n "${PERF_STAT:-}" ]; then
    perf stat -e syscalls:sys_enter_sync_file_range,syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync,syscalls:sys_enter_pwrite64,context-switches,task-clock \
        -p "$pid" -o perf-stat.txt >/dev/null 2>&1 &
    perf_pid=$!
    sleep 1
elif [ -n "${PERF_DATA:-}" ]; then
    perf record ${PERF_ARGS:--g} -p "$pid" -o "$PERF_DATA" >/dev/null 2>&1 &
    perf_pid=$!
    sleep 1
fi
load --kind request --requests "$REQUESTS" --connections "$CONNECTIONS"
if [ -n "$perf_pid" ]; then kill -INT "$perf_pid"; wait "$perf_pid" || true; fi
[ -f perf-stat.txt ] && grep -E "syscalls|context|task-clock|elapsed" perf-stat.txt | sed 's/^/# /'
echo "# commits after the POST load: $(commits)"
echo "# load average: $(cut -d' ' -f1-3 /proc/loadavg)"
load --kind request --requests "$NEW_REQUESTS" --connections 1 --new-connection
load --kind request --requests "$NEW_REQUESTS" --connections "$CONNECTIONS" --new-connection
load --kind freebusy --requests "$FB_REQUESTS" --connections 1
echo "# load average: $(cut -d' ' -f1-3 /proc/loadavg)"
# Stop the daemon and show how well its flushes were grouped (its last log lines).
kill "$pid"
wait "$pid" 2>/dev/null || true
pid=
grep 'flushes' daemon.log | sed 's/^/# /'
