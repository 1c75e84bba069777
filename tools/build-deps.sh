#!/usr/bin/env bash
# Installs what building imipd needs on Debian (a C toolchain, pkg-config, OpenSSL and libclang
# headers), and any extra packages given as arguments. As root it uses apt-get directly; as
# another user, sudo (when there is one). Already installed packages are left alone.
set -euo pipefail

pkgs=(build-essential pkg-config libssl-dev libclang-dev "$@")
need=()
for pkg in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
[ ${#need[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
  echo "NOTICE: no apt-get; install ${need[*]} by hand" >&2
  exit 0
fi

SUDO=()
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null; then
    SUDO=(sudo)
  else
    echo "build-deps: not root and no sudo; as root run: apt-get install ${need[*]}" >&2
    exit 1
  fi
fi

# Postfix must not ask questions; no package may start a system service (Postfix, Dovecot):
# the tests run their own instances. policy-rc.d (exit 101) forbids it during the install.
if printf '%s\n' "${need[@]}" | grep -qx postfix; then
  echo "postfix postfix/main_mailer_type select No configuration" | "${SUDO[@]}" debconf-set-selections
fi
policy_rc=/usr/sbin/policy-rc.d
placed=""
cleanup() { if [ -n "$placed" ]; then "${SUDO[@]}" rm -f "$policy_rc"; fi; }
trap cleanup EXIT
if [ ! -e "$policy_rc" ]; then
  printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy_rc" >/dev/null
  "${SUDO[@]}" chmod 755 "$policy_rc"
  placed=1
fi
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
