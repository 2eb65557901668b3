#!/usr/bin/env bash
# Puts what the `qemu` host-agent backend runs into the tools folder (${DHM_TOOLS_DIR:-<project>/.tools}/qemu):
#   - QEMU >= 10 from bookworm-backports (QEMU 7.2 corrupts guests migrated under CPU contention) plus the debs it
#     needs that this host lacks, unpacked with dpkg-deb -x (never installed);
#   - a guest: the Debian cloud kernel's vmlinuz and an initramfs built from busybox-static around guest-init.sh;
#   - manifest.json, which the backend reads (paths relative to it), and bin/qemu-system-x86_64, a wrapper for people.
# The host's apt set-up is left alone: sources, lists and the download cache are private to the tools folder.
# Idempotent and cached: a stamp keyed by this script and guest-init.sh makes a second run a no-op.
set -euo pipefail

t0=$(date +%s%N)
ms_since() { echo $((($(date +%s%N) - $1) / 1000000)); }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
project=$(cd "$here/../.." && pwd)
tools=${DHM_TOOLS_DIR:-$project/.tools}
dest=$tools/qemu
key=$(cat "$here/setup.sh" "$here/guest-init.sh" "$here/guest-counter-service.sh" | sha256sum | cut -c1-16)

cached() { [ -f "$dest/stamp" ] && [ "$(cat "$dest/stamp")" = "$key" ] && [ -f "$dest/manifest.json" ]; }
if cached; then
  echo "qemu tools: up to date in $dest ($(ms_since "$t0") ms)"
  exit 0
fi

mkdir -p "$tools"
# Two runs at once (CI, a test's beforeAll, `dhm`) must not build into the same folder: the second waits, then
# finds the stamp.
exec 9>"$tools/.qemu-setup.lock"
flock 9
if cached; then
  echo "qemu tools: up to date in $dest (built by a concurrent run; $(ms_since "$t0") ms)"
  exit 0
fi

if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
  echo "qemu tools: need apt-get and dpkg-deb (a Debian bookworm host)" >&2
  exit 1
fi

step() { printf 'qemu tools: %s\n' "$*"; }
step "building into $dest (key $key)"

# ---- private apt: bookworm + backports + security, lists and cache under the tools folder ----------------------
aptdir=$tools/qemu-apt
mkdir -p "$aptdir/lists/partial" "$aptdir/cache/archives/partial" "$aptdir/sources.list.d"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
cat >"$aptdir/sources.list" <<EOF
deb [signed-by=$keyring] http://deb.debian.org/debian bookworm main
deb [signed-by=$keyring] http://deb.debian.org/debian bookworm-updates main
deb [signed-by=$keyring] http://deb.debian.org/debian bookworm-backports main
deb [signed-by=$keyring] http://deb.debian.org/debian-security bookworm-security main
EOF
apt_opts=(
  -o "Dir::Etc::SourceList=$aptdir/sources.list"
  -o "Dir::Etc::SourceParts=$aptdir/sources.list.d"
  -o "Dir::State::Lists=$aptdir/lists"
  -o "Dir::Cache=$aptdir/cache"
  -o "APT::Sandbox::User=root"
  -o "Debug::NoLocking=true"
)
t=$(date +%s%N)
apt-get "${apt_opts[@]}" -qq update
step "apt-get update (private lists) $(ms_since "$t") ms"

# ---- which debs ---------------------------------------------------------------------------------------------
bpo=bookworm-backports
kernel_pkg=$(apt-cache "${apt_opts[@]}" depends --no-recommends linux-image-cloud-amd64 |
  awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
[ -n "$kernel_pkg" ] || { echo "qemu tools: no linux-image-*-cloud-amd64 found" >&2; exit 1; }
# QEMU and its firmware/data always come from the tools folder; shared libraries only where this host lacks them
# (what apt would install here, simulated against the host's dpkg status; ldd checks the result below).
# qemu-utils: qemu-storage-daemon (the testbed's network storage service) and qemu-img.
wanted=(qemu-system-x86/$bpo qemu-system-common/$bpo qemu-system-data/$bpo seabios/$bpo qemu-utils/$bpo)
sim=$(apt-get "${apt_opts[@]}" -s install --no-install-recommends "${wanted[@]}")
mapfile -t libs < <(awk '/^Inst lib/ { print $2 }' <<<"$sim")
debs=("${wanted[@]}" "${libs[@]}" busybox-static "$kernel_pkg")
step "packages: ${debs[*]}"

work=$(mktemp -d "$tools/.qemu-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/debs" "$work/out/root" "$work/out/guest" "$work/out/bin" "$work/busybox" "$work/kernel" "$work/initramfs"

t=$(date +%s%N)
(cd "$work/debs" && apt-get "${apt_opts[@]}" -qq download "${debs[@]}")
step "apt-get download $(du -sm "$work/debs" | cut -f1) MiB $(ms_since "$t") ms"

# ---- unpack ---------------------------------------------------------------------------------------------------
t=$(date +%s%N)
for deb in "$work"/debs/*.deb; do
  case "$(basename "$deb")" in
    busybox-static_*) dpkg-deb -x "$deb" "$work/busybox" ;;
    # vmlinuz, and the virtio NIC's modules (the cloud kernel has them as modules; guest-init.sh loads them).
    linux-image-*) dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work/kernel" --wildcards './boot/vmlinuz-*' \
      './lib/modules/*/kernel/drivers/virtio/virtio*.ko' './lib/modules/*/kernel/drivers/net/*failover.ko' \
      './lib/modules/*/kernel/drivers/net/virtio_net.ko' './lib/modules/*/kernel/net/core/failover.ko' \
      './lib/modules/*/kernel/drivers/block/virtio_blk.ko' ;;
    *) dpkg-deb -x "$deb" "$work/out/root" ;;
  esac
done
cp "$work"/kernel/boot/vmlinuz-* "$work/out/guest/vmlinuz"
step "unpacked $(ms_since "$t") ms"

# ---- guest initramfs ------------------------------------------------------------------------------------------
t=$(date +%s%N)
ir=$work/initramfs
mkdir -p "$ir/bin" "$ir/dev" "$ir/proc" "$ir/sys" "$ir/tmp" "$ir/dirty"
cp "$work/busybox/bin/busybox" "$ir/bin/busybox"
cp "$here/guest-init.sh" "$ir/init"
cp "$here/guest-counter-service.sh" "$ir/bin/dhm-counter-service"
mkdir -p "$ir/lib/modules/dhm"
find "$work/kernel/lib/modules" -name '*.ko' -exec cp {} "$ir/lib/modules/dhm/" \;
chmod 755 "$ir/init" "$ir/bin/busybox" "$ir/bin/dhm-counter-service"
(cd "$ir" && find . | LC_ALL=C sort | "$ir/bin/busybox" cpio -o -H newc 2>/dev/null | gzip -9n >"$work/out/guest/initrd.gz")
step "initramfs $(du -k "$work/out/guest/initrd.gz" | cut -f1) KiB $(ms_since "$t") ms"

# ---- check it runs here ---------------------------------------------------------------------------------------
root=$work/out/root
libpath=$root/usr/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu
qemu=$root/usr/bin/qemu-system-x86_64
missing=$(for b in "$qemu" "$root/usr/bin/qemu-storage-daemon" "$root/usr/bin/qemu-img"; do LD_LIBRARY_PATH=$libpath ldd "$b"; done | awk '/not found/ { print $1 }' | sort -u)
if [ -n "$missing" ]; then
  echo "qemu tools: shared libraries still missing: $missing" >&2
  exit 1
fi
version=$(LD_LIBRARY_PATH=$libpath "$qemu" --version | awk 'NR == 1 { print $4 }')
major=${version%%.*}
if [ "${major:-0}" -lt 10 ]; then
  echo "qemu tools: need QEMU >= 10, got $version" >&2
  exit 1
fi
step "QEMU $version, all shared libraries resolve"

cat >"$work/out/manifest.json" <<EOF
{
  "qemuVersion": "$version",
  "kernelPackage": "$kernel_pkg",
  "qemu": "root/usr/bin/qemu-system-x86_64",
  "storageDaemon": "root/usr/bin/qemu-storage-daemon",
  "qemuImg": "root/usr/bin/qemu-img",
  "libraryPath": ["root/usr/lib/x86_64-linux-gnu", "root/lib/x86_64-linux-gnu"],
  "moduleDir": "root/usr/lib/x86_64-linux-gnu/qemu",
  "dataDirs": ["root/usr/share/qemu", "root/usr/share/seabios"],
  "kernel": "guest/vmlinuz",
  "initrd": "guest/initrd.gz"
}
EOF
cat >"$work/out/bin/qemu-system-x86_64" <<'EOF'
#!/bin/sh
# QEMU from the tools folder, with its own libraries, modules and firmware.
d=$(cd "$(dirname "$0")/.." && pwd)
LD_LIBRARY_PATH="$d/root/usr/lib/x86_64-linux-gnu:$d/root/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  QEMU_MODULE_DIR="$d/root/usr/lib/x86_64-linux-gnu/qemu" \
  exec "$d/root/usr/bin/qemu-system-x86_64" -L "$d/root/usr/share/qemu" -L "$d/root/usr/share/seabios" "$@"
EOF
chmod 755 "$work/out/bin/qemu-system-x86_64"
echo "$key" >"$work/out/stamp"

# Swap in whole, so a reader never sees half a folder.
rm -rf "$dest"
mv "$work/out" "$dest"
step "ready in $dest ($(du -sm "$dest" | cut -f1) MiB, $(ms_since "$t0") ms)"
