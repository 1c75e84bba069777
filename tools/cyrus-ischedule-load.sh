#!/bin/sh
# The peer figure beside tools/ischedule-load.sh: Debian's Cyrus httpd (cyrus-caldav) unpacked
# and run on loopback as tests/ischedule.rs does, loaded by `imipd-load ischedule` over plain
# HTTP (Cyrus has no TLS here and ignores DKIM; the requests are signed all the same).
#
#   tools/cyrus-ischedule-load.sh DEBS_DIR [TARGET_DIR]     (as root: Cyrus's master drops to nobody)
#
# Bounded in count and time; Cyrus's master and its children are stopped by PID at the end.
set -eu
debs=$1
bin=$(cd "${2:-target/release}" && pwd)
observed=$(cd "$(dirname "$0")/../../shared/specs/ischedule/observed" && pwd)
dir=$(mktemp -d)
chmod 755 "$dir"
master=
cleanup() {
    if [ -n "$master" ]; then
        kids=$(ps -o pid= --ppid "$master" || true)
        kill "$master" 2>/dev/null || true
        for k in $kids; do kill "$k" 2>/dev/null || true; done
        sleep 1
    fi
    rm -rf "$dir"
}
trap cleanup EXIT INT TERM
cd "$dir"
for f in "$debs"/*.deb; do dpkg-deb -x "$f" root; done
mkdir -p state/conf/socket state/spool state/run
http=18508
imap=18543
for f in imapd cyrus; do
    sed -e "s|\$CYRUS_STATE|$dir/state|g" -e "s|\$CYRUS_ROOT|$dir/root|g" \
        -e "s|127.0.0.1:18008|127.0.0.1:$http|" -e "s|127.0.0.1:18143|127.0.0.1:$imap|" \
        "$observed/loopback-$f.conf" >"state/$f.conf"
done
chown -R nobody:nogroup state
LD_LIBRARY_PATH=$dir/root/usr/lib/x86_64-linux-gnu:$dir/root/lib/x86_64-linux-gnu \
    setsid root/usr/lib/cyrus/bin/master -C state/imapd.conf -M state/cyrus.conf \
    >/dev/null 2>&1 &
master=$!
i=0
until curl -sf -o /dev/null "http://127.0.0.1:$http/ischedule?action=capabilities"; do
    i=$((i + 1))
    [ $i -lt 100 ] || { echo "Cyrus httpd did not come up" >&2; exit 1; }
    sleep 0.2
done
python3 - "$imap" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
f = s.makefile("rb")
f.readline()
for tag, c in [("a0", "LOGIN admin x"), ("a1", "CREATE user/bob"), ("z", "LOGOUT")]:
    s.sendall(f"{tag} {c}\r\n".encode())
    for _ in range(100):
        line = f.readline()
        if not line or line.startswith(tag.encode() + b" "):
            break
PY
# The calendar home is made by the first authenticated request (Cyrus drops every other
# connection on a quiet server: a few tries).
for _ in 1 2 3 4; do
    curl -s -o /dev/null -u bob:x -X PROPFIND -H "Depth: 0" \
        "http://127.0.0.1:$http/dav/calendars/user/bob/" && break
done
openssl genrsa -out signer.pem 2048 2>/dev/null
echo "# Cyrus master pid $master; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
load() {
    "$bin/imipd-load" ischedule --target "127.0.0.1:$http" --plain --host 127.0.0.1 \
        --path /ischedule --key signer.pem --domain example.com --originator alice@example.com \
        --recipient bob@example.org --timeout 200 "$@"
}
load --kind request --requests 50 --connections 1
load --kind request --requests 50 --connections 1 --new-connection
load --kind request --requests 200 --connections 8
load --kind freebusy --requests 200 --connections 1
load --kind freebusy --requests 100 --connections 1 --new-connection
echo "# load average: $(cut -d' ' -f1-3 /proc/loadavg)"
