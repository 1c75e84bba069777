#!/usr/bin/env bash
# Runs the whole test suite. On Debian it first installs what the tests drive for real:
# a private Postfix, swaks, miltertest, dnsmasq, openssl, Sequoia's sq, dkimpy, Dovecot's LMTP
# server, cargo-deb, and downloads (never installs) the Cyrus packages of the iSchedule interop
# test into a cache the test reads. Nothing after the install step needs the network.
# Works as root (no sudo needed) and as a user with sudo. Under CI=true a test whose tool is
# missing fails; elsewhere it prints a NOTICE and skips.
set -euo pipefail
cd "$(dirname "$0")/.."

bash tools/build-deps.sh postfix swaks miltertest dnsmasq-base sq openssl python3-pip \
  dovecot-core dovecot-lmtpd dovecot-sieve opendkim opendkim-tools \
  || echo "NOTICE: the test tools could not be installed; tests that need them will skip"
if ! python3 -c 'import dkim, nacl' 2>/dev/null; then
  python3 -m pip install --quiet dkimpy pynacl 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages dkimpy pynacl 2>/dev/null \
    || echo "NOTICE: dkimpy could not be installed; the DKIM tests will skip"
fi

# The Debian package test builds a .deb with cargo-deb (never installed on this host).
if ! cargo deb --version >/dev/null 2>&1; then
  cargo install cargo-deb --locked --quiet || echo "NOTICE: cargo-deb could not be installed; the package test will skip"
fi

# Cyrus's iSchedule receiver for the interop test: downloaded (not installed) once, into the
# cache the test reads, so that the test itself never touches the network.
export IMIPD_TEST_CACHE="${IMIPD_TEST_CACHE:-$PWD/target/test-cache}"
cyrus="$IMIPD_TEST_CACHE/cyrus-debs"
if ! ls "$cyrus"/cyrus-caldav_*.deb >/dev/null 2>&1 && command -v apt-get >/dev/null; then
  mkdir -p "$cyrus"
  (cd "$cyrus" && apt-get download -qq cyrus-common cyrus-caldav cyrus-imapd libshp2 libwrap0 \
      libpcre3 libical3 libxapian30 >/dev/null 2>&1) \
    || echo "NOTICE: apt-get download of the Cyrus packages failed; the Cyrus interop test will skip"
fi

# fault-injection: lets the tests of the tempfail path make the store fail (never in a release
# build).
cargo test --workspace --features imipd/fault-injection
