#!/usr/bin/env bash
# Runs the whole test suite. On Debian it first installs what the tests drive for real:
# a private Postfix, swaks, miltertest, dnsmasq, openssl, Sequoia's sq, and dkimpy.
# Tests whose tools are missing print a NOTICE and skip; nothing here needs the network
# except the package installs.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for pkg in build-essential pkg-config libssl-dev libclang-dev postfix swaks miltertest dnsmasq-base sq openssl; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  # Postfix must not ask questions nor start a system instance: the tests run their own.
  echo "postfix postfix/main_mailer_type select No configuration" | $SUDO debconf-set-selections
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
if ! python3 -c 'import dkim, nacl' 2>/dev/null; then
  python3 -m pip install --quiet dkimpy pynacl 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages dkimpy pynacl 2>/dev/null \
    || echo "NOTICE: dkimpy could not be installed; the DKIM tests will skip"
fi

cargo test --workspace
