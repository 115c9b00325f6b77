#!/bin/busybox sh
# /init of the lab initramfs (busybox, static helpers, 9p + overlay modules).
#
# Kernel command line:
#   lab.mode=shell    (default) serve harness commands on the console
#   lab.mode=systemd  switch_root into the rootfs with systemd as PID 1
# 9p shares, found by mount tag (all optional):
#   kmods  -> /lib/modules   the booted kernel's module tree (ro)
#   rootfs -> /root          arm64 Debian tree, read-only lower + tmpfs upper
#   rasd   -> /rasd          the rasd checkout (ro)
#   lab    -> /lab           this scenario's evidence/exchange directory (rw)
# Harness protocol on the console (see harness.py):
#   host:  @@RUN <id> <base64 command>
#   guest: @@LAB-BEGIN <id> ... output ... @@LAB-END <id> <exit status>
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
mount -t debugfs debugfs /sys/kernel/debug
mount -t tracefs tracefs /sys/kernel/tracing
mount -t securityfs securityfs /sys/kernel/security   # lockdown mode, for rasd
echo "@@LAB-INIT uptime=$(cut -d' ' -f1 /proc/uptime) kernel=$(uname -r)"

while read -r m; do
    insmod "/lib/initrd-modules/$m" || echo "@@LAB-WARN insmod $m failed"
done < /lib/initrd-modules/order

opt() { sed -n "s/.*lab\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }

# Tags of the virtio-9p devices QEMU was given.
tags=""
for t in /sys/bus/virtio/drivers/9pnet_virtio/*/mount_tag; do
    [ -e "$t" ] && tags="$tags $(tr -d '\0' < "$t")"
done

mount9p() {  # tag dir extra-options
    mkdir -p "$2"
    mount -t 9p -o "trans=virtio,version=9p2000.L,msize=512000,$3" "$1" "$2" ||
        echo "@@LAB-WARN mount $1 failed"
}

for tag in $tags; do
    case $tag in
    kmods) mount9p kmods /lib/modules ro,cache=loose ;;
    rasd) mount9p rasd /rasd ro,cache=loose ;;   # a private copy: never changes
    lab) mount9p lab /lab cache=none ;;
    rootfs)
        # The cached tree must never change: the guest writes to tmpfs.
        mkdir -p /mnt/lower /mnt/rw
        mount9p rootfs /mnt/lower ro,cache=loose
        mount -t tmpfs -o size=512m tmpfs /mnt/rw
        mkdir -p /mnt/rw/upper /mnt/rw/work
        mount -t overlay -o lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work \
            overlay /root || echo "@@LAB-WARN overlay failed"
        ;;
    esac
done

if grep -q " /root " /proc/mounts; then
    for d in proc sys dev lib/modules rasd lab; do
        grep -q " /$d " /proc/mounts || continue
        mkdir -p "/root/$d" && mount --rbind "/$d" "/root/$d"
    done
    mount -t tmpfs tmpfs /root/tmp
    mount -t tmpfs tmpfs /root/run
fi
# Extra set-up shipped by a scenario (e.g. the POLLED sources' pointers).
[ -x /etc/lab-boot.sh ] && /etc/lab-boot.sh

# The harness's command loop (protocol in harness.py), for both modes.
cat > /bin/lab-serve <<'EOF'
#!/bin/sh
# The console echoes input by default; the harness must see only output.
stty -echo 2>/dev/null
echo "@@LAB-READY uptime=$(cut -d' ' -f1 /proc/uptime)"
while IFS= read -r line; do
    case "$line" in
    "@@RUN "*)
        set -- $line
        echo "@@LAB-BEGIN $2"
        echo "$3" | base64 -d > /tmp/lab-cmd-run.sh
        sh /tmp/lab-cmd-run.sh < /dev/null
        echo "@@LAB-END $2 $?"
        ;;
    esac
done
echo "@@LAB-EOF"
EOF
chmod 755 /bin/lab-serve

if [ "$(opt mode)" = systemd ]; then
    # systemd as PID 1 in the rootfs (tmpfs overlay); the command loop becomes a
    # service on the serial console and the serial getty is masked.
    u=/root/etc/systemd/system
    mkdir -p /root/usr/local/sbin "$u/multi-user.target.wants"
    cp /bin/lab-serve /root/usr/local/sbin/lab-serve
    cat > "$u/lab-serve.service" <<'EOF'
[Unit]
Description=rasd lab: harness commands on the serial console
After=systemd-journald.service
[Service]
ExecStart=/usr/local/sbin/lab-serve
StandardInput=tty-force
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyAMA0
TTYReset=no
TTYVHangup=no
Restart=always
[Install]
WantedBy=multi-user.target
EOF
    ln -sf ../lab-serve.service "$u/multi-user.target.wants/lab-serve.service"
    ln -sf /dev/null "$u/serial-getty@ttyAMA0.service"
    ln -sf /dev/null "$u/getty@tty1.service"
    echo "@@LAB-SWITCH systemd"
    for d in proc sys dev; do umount -l "/root/$d"; done
    exec switch_root /root /lib/systemd/systemd
fi

exec /bin/lab-serve < /dev/console > /dev/console 2>&1
