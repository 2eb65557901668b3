#!/usr/bin/env bash
# Debian packages the tests need beyond Node and Go. Skips apt entirely when everything is already there.
set -euo pipefail
need=()
for pkg in "$@"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -eq 0 ]; then
  echo "system packages: nothing to install"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "system packages missing (${need[*]}); run: sudo apt-get install -y ${need[*]}" >&2
  exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
