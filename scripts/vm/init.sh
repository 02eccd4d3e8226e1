#!/bin/busybox sh
# /init of the kernel-test VM (busybox). Host / (9p, read-only) under a RAM overlay becomes the
# root, /run and /tmp are fresh tmpfs, the writable 9p share "out" is /run/vm. Runs
# /run/vm/main.sh (written by scripts/vm/run.sh), stores its exit code in /run/vm/rc, powers off.
# Host directories listed in /run/vm/host-paths (the checkout, DENO_DIR when they live under /tmp
# or /run) are bound back over the fresh tmpfs at the same path.
/bin/busybox --install -s /bin
export PATH=/bin

R=/newroot
fail() {
  echo "vm-init: FAILED: $*"
  # rc 125 = the harness failed, not the guest script.
  [ -d $R/run/vm ] && echo 125 >$R/run/vm/rc
  sync
  poweroff -f
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r mod args; do
  # shellcheck disable=SC2086 # args are module parameters, split on purpose
  insmod /lib/modules/$mod $args || fail "insmod $mod $args"
done </modules.list

# msize 512 KiB: fewer round trips for big reads (deno binary, fixtures) than the 8 KiB default.
P9="trans=virtio,version=9p2000.L,msize=524288"
# cache=loose on the read-only host root: cold `deno eval` 6.3 s -> 2.1 s. The guest then sees
# host files as of their first read; fine for a VM that lives for one test run.
mount -t 9p -o "$P9,ro,cache=loose" host /lower || fail "mount 9p host root"
mount -t tmpfs -o mode=0755 rw /rw || fail "tmpfs /rw"
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work,redirect_dir=off,index=off,xino=off \
  overlay $R || fail "overlay root"
# A second view of the root taken before /tmp and /run are covered: host-paths are bound from
# here, so they stay writable (RAM) like the rest of the root.
mkdir -p /rootview
mount -o bind $R /rootview || fail "bind root view"

mount -t proc proc $R/proc || fail "proc"
mount -t sysfs sysfs $R/sys || fail "sysfs"
mount -t devtmpfs devtmpfs $R/dev || fail "devtmpfs"
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666,mode=0620 devpts $R/dev/pts || fail "devpts"
mount -t tmpfs -o mode=1777 shm $R/dev/shm || fail "dev/shm"
# devtmpfs lacks these; bash process substitution needs /dev/fd.
ln -sfn /proc/self/fd $R/dev/fd
ln -sfn /proc/self/fd/0 $R/dev/stdin
ln -sfn /proc/self/fd/1 $R/dev/stdout
ln -sfn /proc/self/fd/2 $R/dev/stderr
# Fresh /run hides the host's pid files and runtime dirs (/var/run -> /run on Debian).
mount -t tmpfs -o mode=0755 run $R/run || fail "tmpfs /run"
# The host's /tmp stays readable at /run/host-tmp; the guest's /tmp is RAM.
mkdir -p $R/run/host-tmp $R/run/vm
mount -o bind,ro /lower/tmp $R/run/host-tmp || fail "bind host /tmp"
mount -t tmpfs -o mode=1777 tmp $R/tmp || fail "tmpfs /tmp"
mount -t 9p -o "$P9" out $R/run/vm || fail "mount 9p out share"
[ -f $R/run/vm/main.sh ] || fail "no /run/vm/main.sh in the out share"
if [ -f $R/run/vm/host-paths ]; then
  while IFS= read -r p; do
    [ -n "$p" ] || continue
    [ -d "/rootview$p" ] || fail "host path '$p' is not a directory the guest can see"
    mkdir -p "$R$p" || fail "mkdir '$p'"
    mount -o bind "/rootview$p" "$R$p" || fail "bind host path '$p'"
  done <$R/run/vm/host-paths
fi

ip link set lo up || fail "lo up"
hostname erofs-oci-vm
echo "vm-init: guest ready at $(cut -d' ' -f1 /proc/uptime) s uptime"

chroot $R /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  HOME=/root TERM=dumb LANG=C.UTF-8 EROFS_OCI_IN_VM=1 /bin/bash /run/vm/main.sh </dev/null
rc=$?
echo $rc >$R/run/vm/rc
echo "vm-init: guest script exited with $rc at $(cut -d' ' -f1 /proc/uptime) s uptime"
sync
poweroff -f
