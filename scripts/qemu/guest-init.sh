#!/bin/busybox sh
# /init of dhm's test guest (PID 1 in the initramfs built by scripts/qemu/setup.sh). It prints
# "dhm-counter N" to ttyS0 every 0.5 s; N lives in this shell's memory, so after a live migration the
# destination's serial log goes on at the source's last N + 1, while a reboot would start again at 1.
# With dhm.dirty_mib=W on the kernel command line it also keeps rewriting a W MiB tmpfs buffer (dirtying guest
# memory for pre-copy to chase) at dhm.dirty_rate_mibps=D MiB/s of changed pages (0 = as fast as the vCPU can).
# With dhm.ip=A/P (a VM with a NIC) it loads the virtio modules, brings eth0 up with that address (MTU 1450: the
# tenant network is VXLAN) and serves the counter on TCP port 7000 (each request line is answered "<line> <N>").
# dhm.marker=M writes M many times into guest memory (tests look for it on the wire).
# With dhm.disks=N (a VM with N virtio disks) it loads virtio_blk and keeps writing numbered, checksummed 4 KiB
# blocks to every disk: block k at offset k*4096 is "DHMBLK <k, 10 digits> <sha256 of "k\n" + payload>\n" and 4013
# random bytes, fsync'd; after each block it prints "dhm-disk k" (k and every block before it are on disk).
# dhm.disk_blocks=L stops it at block L (the rest of the disk is the host's); compute/qemu/disk-blocks.ts verifies.
/bin/busybox mkdir -p /proc /sys /dev /tmp /dirty
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
exec </dev/null >/dev/ttyS0 2>&1

dirty_mib=0
dirty_rate=0
ip_addr=""
marker=""
disks=0
disk_blocks=0
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    dhm.dirty_mib=*) dirty_mib=${arg#dhm.dirty_mib=} ;;
    dhm.dirty_rate_mibps=*) dirty_rate=${arg#dhm.dirty_rate_mibps=} ;;
    dhm.ip=*) ip_addr=${arg#dhm.ip=} ;;
    dhm.marker=*) marker=${arg#dhm.marker=} ;;
    dhm.disks=*) disks=${arg#dhm.disks=} ;;
    dhm.disk_blocks=*) disk_blocks=${arg#dhm.disk_blocks=} ;;
  esac
done
mkdir -p /run
echo 0 >/run/counter

if [ -n "$marker" ]; then
  mkdir -p /marker
  mount -t tmpfs -o size=1m tmpfs /marker
  i=0
  line=""
  while [ "$i" -lt 64 ]; do line="$line$marker "; i=$((i + 1)); done
  i=0
  while [ "$i" -lt 64 ]; do echo "$line"; i=$((i + 1)); done >/marker/m
fi

case "$disks" in '' | *[!0-9]*) disks=0 ;; esac
case "$disk_blocks" in '' | *[!0-9]*) disk_blocks=0 ;; esac
if [ -n "$ip_addr" ] || [ "$disks" -gt 0 ]; then
  # The .deb ships no modules.dep: load the virtio stack in dependency order.
  for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci; do
    insmod /lib/modules/dhm/$m.ko 2>/dev/null
  done
fi
if [ "$disks" -gt 0 ]; then
  insmod /lib/modules/dhm/virtio_blk.ko 2>/dev/null
  n=0
  while [ "$(ls /sys/block | grep -c '^vd')" -lt "$disks" ] && [ "$n" -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
  devs=""
  for d in $(ls /sys/block | grep '^vd'); do devs="$devs /dev/$d"; done
  # Never past the end of the smallest disk (a network volume may be smaller than the host's limit).
  for d in $devs; do
    b=$(($(cat /sys/block/${d#/dev/}/size) / 8))
    if [ "$disk_blocks" -eq 0 ] || [ "$b" -lt "$disk_blocks" ]; then disk_blocks=$b; fi
  done
  echo "dhm-disks devices=${devs# } blocks=${disk_blocks}"
  (
    k=0
    while [ "$disk_blocks" -eq 0 ] || [ "$k" -lt "$disk_blocks" ]; do
      head -c 4013 /dev/urandom >/tmp/blk.p
      set -- $({ echo "$k"; cat /tmp/blk.p; } | sha256sum)
      printf 'DHMBLK %010d %s\n' "$k" "$1" >/tmp/blk
      cat /tmp/blk.p >>/tmp/blk
      for d in $devs; do dd if=/tmp/blk of="$d" bs=4096 seek="$k" count=1 conv=notrunc,fsync 2>/dev/null; done
      echo "dhm-disk $k"
      k=$((k + 1))
      # ~6 forks a block: paced to one a second, so the writer leaves the TCG vCPU to the counter service.
      sleep 1
    done
    echo "dhm-disk-full $k"
  ) &
fi

if [ -n "$ip_addr" ]; then
  for m in failover net_failover virtio_net; do
    insmod /lib/modules/dhm/$m.ko 2>/dev/null
  done
  n=0
  while [ ! -e /sys/class/net/eth0 ] && [ "$n" -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
  ip link set lo up
  ip link set eth0 mtu 1450 up
  ip addr add "$ip_addr" dev eth0
  nc -ll -p 7000 -e /bin/dhm-counter-service &
  echo "dhm-net ip=${ip_addr} eth0=$([ -e /sys/class/net/eth0 ] && echo up || echo missing)"
fi
case "$dirty_mib" in '' | *[!0-9]*) dirty_mib=0 ;; esac
case "$dirty_rate" in '' | *[!0-9]*) dirty_rate=0 ;; esac

# More than 1/8 of the guest's RAM in tmpfs starves a small guest: cap it rather than crash.
mem_mib=$(awk '/^MemTotal:/ { print int($2 / 1024) }' /proc/meminfo)
cap=$((mem_mib / 8))
if [ "$dirty_mib" -gt "$cap" ]; then
  echo "dhm-dirty capped from ${dirty_mib} to ${cap} MiB"
  dirty_mib=$cap
fi

if [ "$dirty_mib" -gt 0 ]; then
  mount -t tmpfs -o size=$((dirty_mib + 5))m tmpfs /dirty
  # Two random 2 MiB patterns, not zeros (QEMU sends zero pages as a flag) and not one pattern: passes alternate
  # between them, so every write changes the page's content. A rewrite with identical bytes still costs pre-copy a
  # resend, but QEMU's calc-dirty-rate (page-sampling) compares page hashes and would read it as clean.
  dd if=/dev/urandom of=/dirty/a bs=1048576 count=2 2>/dev/null
  dd if=/dev/urandom of=/dirty/b bs=1048576 count=2 2>/dev/null
  # Paced per chunk against /proc/uptime (centiseconds, no fork to read it): the buffer's pages change at
  # dirty_rate MiB/s, evenly, until the vCPU cannot keep up (0 = as fast as it can). Chunks of 1 MiB below 8 MiB/s,
  # else 2 MiB (one dd fork each: forks are what limits a TCG guest, ~15-20 MiB/s with 2 MiB chunks on a busy host).
  chunk=2
  [ "$dirty_rate" -gt 0 ] && [ "$dirty_rate" -lt 8 ] && chunk=1
  # A writer that fell more than a second behind (a throttled or paused guest) starts a fresh schedule instead of
  # bursting to catch up.
  (
    k=0
    pass=0
    n=0
    read up _ </proc/uptime
    t0=$((${up%.*} * 100 + 1${up#*.} - 100))
    while :; do
      src=/dirty/a
      [ $((pass % 2)) -eq 1 ] && src=/dirty/b
      c=$chunk
      [ $((k + c)) -gt "$dirty_mib" ] && c=$((dirty_mib - k))
      dd if=$src of=/dirty/buf bs=1048576 count=$c seek=$k conv=notrunc 2>/dev/null
      k=$((k + c))
      n=$((n + c))
      if [ "$k" -ge "$dirty_mib" ]; then
        k=0
        pass=$((pass + 1))
        # The pass number lives in this subshell's memory: after a live move it goes on (+1), never restarts.
        echo "dhm-dirty-pass $pass"
      fi
      [ "$dirty_rate" -gt 0 ] || continue
      read up _ </proc/uptime
      now=$((${up%.*} * 100 + 1${up#*.} - 100))
      due=$((t0 + n * 100 / dirty_rate))
      if [ "$due" -gt "$now" ]; then
        d=$((due - now))
        sleep "$((d / 100)).$(printf %02d $((d % 100)))"
      elif [ $((now - due)) -gt 100 ]; then
        t0=$((now - n * 100 / dirty_rate))
      fi
    done
  ) &
fi

echo "dhm-ready mem_mib=${mem_mib} dirty_mib=${dirty_mib} dirty_rate_mibps=${dirty_rate}"
n=0
while :; do
  n=$((n + 1))
  echo "dhm-counter $n"
  # Written aside and renamed: the service's `read` goes byte by byte, so an in-place rewrite could mix two values.
  echo "$n" >/run/counter.new
  mv /run/counter.new /run/counter
  sleep 0.5
done
