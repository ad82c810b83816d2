#!/usr/bin/env bash
# The kernel lab: vsnap's production stack (OpenZFS, LIO through rtslib-fb, the kernel NFS
# server, Samba, systemd, nginx) in a Debian 12 guest under QEMU (TCG: this machine's kernel
# has no modules, and its /dev/kvm boots only special guest kernels). See ../shared/LAB.md.
#
#   lab/kernel-lab.sh build     the guest image, once per package list (cached, reused)
#   lab/kernel-lab.sh up        build if needed, boot, install this tree with `make install`
#                               and start vsnap-api and nginx as production does
#   lab/kernel-lab.sh install   install this tree again into the running guest, restart
#   lab/kernel-lab.sh ssh CMD   run a command in the guest (as root)
#   lab/kernel-lab.sh down      stop the guest (by pid); the built image is kept
#   lab/kernel-lab.sh status
#
# Environment:
#   VSNAP_KERNEL_LAB   where it all lives           (default /var/lib/vsnap-kernel-lab)
#   KLAB_API_PORT      host port of the guest's API, nginx on 8900  (default 8990)
#   KLAB_SSH_PORT      host port of the guest's sshd                (default 8991)
#   KLAB_ISCSI_PORT    host port of the guest's iSCSI target (3260) (default 8992)
#   KLAB_NFS_PORT      host port of the guest's NFS server (2049)   (default 8993)
#   KLAB_SMB_PORT      host port of the guest's Samba (445)         (default 8994)
#   KLAB_DISKS         pool disks given to the guest, virtio       (default 4, 1 GiB each)
#   KLAB_MEMORY        the guest's memory in MiB                  (default 4096)
#
# Layout:
#   $VSNAP_KERNEL_LAB/images/<key>/{root.img,vmlinuz,initrd.img}  the built image (read-only
#                      base); <key> is a hash of the package list, the project's Python
#                      dependencies and this script's build steps: a change rebuilds, an
#                      unchanged one reuses
#   $VSNAP_KERNEL_LAB/run/{overlay.qcow2,disk*.img,qemu.pid,console.log}  one boot's state
#                      (every `up` boots the built image afresh, with blank pool disks)
#   $VSNAP_KERNEL_LAB/ssh/id_ed25519   the key the host logs in to the guest with
#
# The guest needs no network at test time: every Debian package and the project's Python
# dependencies (and the build backend `make install` needs) are in the image. Its network is
# QEMU's user mode on 198.18.64.0/24 (off the private ranges), reached only through the
# forwarded loopback ports above.
set -euo pipefail
set +m

PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH
export LC_ALL=C

HERE=$(cd "$(dirname "$0")/.." && pwd)
KLAB=${VSNAP_KERNEL_LAB:-/var/lib/vsnap-kernel-lab}
API_PORT=${KLAB_API_PORT:-8990}
SSH_PORT=${KLAB_SSH_PORT:-8991}
ISCSI_PORT=${KLAB_ISCSI_PORT:-8992}
NFS_PORT=${KLAB_NFS_PORT:-8993}
SMB_PORT=${KLAB_SMB_PORT:-8994}
NDISKS=${KLAB_DISKS:-4}
RUN=$KLAB/run
SSHKEY=$KLAB/ssh/id_ed25519
MIRROR=http://deb.debian.org/debian
GUEST_ADDR=198.18.64.15

# What the guest has. A change here (or in pyproject.toml, or in build_rootfs) is a new key.
PACKAGES=(
  linux-image-amd64 linux-headers-amd64 zfs-dkms zfsutils-linux zfs-zed
  targetcli-fb python3-rtslib-fb nfs-kernel-server nfs-common samba smbclient
  systemd-sysv udev dbus kmod iproute2 openssh-server nginx-light
  python3 python3-venv python3-pip make ca-certificates openssl util-linux procps passwd
  lsscsi sg3-utils less
  libiscsi-bin libnfs-utils nftables curl
)
BUILD_VERSION=1   # bump when build_rootfs changes in a way the key would not see

log() { echo "kernel-lab: $*" >&2; }
die() { log "$*"; exit 1; }

image_key() {
  { bootstrap_key; project_dependencies; declare -f customize_rootfs; } | sha256sum | cut -c1-16
}

# What the image's venv holds: pyproject.toml's [project] dependencies and its test extras
# (the guest runs the integration tests marked `guest` on the production stack).
project_dependencies() {
  python3 -c 'import sys, tomllib; p = tomllib.load(open(sys.argv[1], "rb"))["project"]; print("\n".join(p["dependencies"] + p["optional-dependencies"]["test"]))' \
    "$HERE/pyproject.toml"
}

# The Debian part alone (minutes to make): kept as a cache, so a change of the customization
# or of the Python dependencies rebuilds in about a minute.
bootstrap_key() {
  { printf '%s\n' "${PACKAGES[@]}"; echo "$BUILD_VERSION"; declare -f bootstrap_rootfs; } | sha256sum | cut -c1-16
}

guest_ssh() {
  ssh -i "$SSHKEY" -p "$SSH_PORT" -o BatchMode=yes -o StrictHostKeyChecking=no \
      -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=10 root@127.0.0.1 "$@"
}

# -- build ----------------------------------------------------------------------------------
bootstrap_rootfs() {
  local rootfs=$1
  local list
  list=$(IFS=,; echo "${PACKAGES[*]}")
  # zfs-dkms is in contrib; the kernel headers matching linux-image-amd64 come from -updates.
  mmdebstrap --variant=apt --components=main,contrib --include="$list" \
    --customize-hook='echo vsnap-guest > "$1/etc/hostname"' \
    bookworm "$rootfs" \
    "deb $MIRROR bookworm main contrib" "deb $MIRROR bookworm-updates main contrib"
}

customize_rootfs() {
  local rootfs=$1
  # Devices, mounts and the network: static, so boot needs nothing from outside.
  printf 'LABEL=root / ext4 defaults,noatime 0 1\nvsnapsrc /mnt/vsnap-src 9p trans=virtio,version=9p2000.L,ro,nofail,x-systemd.automount 0 0\n' \
    > "$rootfs/etc/fstab"
  mkdir -p "$rootfs/mnt/vsnap-src"
  printf '127.0.0.1 localhost\n127.0.1.1 vsnap-guest\n' > "$rootfs/etc/hosts"
  mkdir -p "$rootfs/etc/systemd/network"
  printf '[Match]\nName=en* eth*\n\n[Network]\nAddress=%s/24\nGateway=198.18.64.2\nDNS=198.18.64.3\n' \
    "$GUEST_ADDR" > "$rootfs/etc/systemd/network/10-qemu.network"
  # The kernel modules the appliance uses, loaded at boot (zfs-import and LIO need them).
  printf 'zfs\nloop\ntarget_core_mod\niscsi_target_mod\ntarget_core_iblock\ntarget_core_file\nnfsd\n9pnet_virtio\n' \
    > "$rootfs/etc/modules-load.d/vsnap.conf"
  # The host logs in with its lab key; nothing else does.
  mkdir -p "$rootfs/root/.ssh"
  install -m 0600 "$SSHKEY.pub" "$rootfs/root/.ssh/authorized_keys"

  # Python dependencies of the project, and the build backend for `make install` (offline in
  # the guest: pip then looks only in /opt/vsnap/wheels). The host's name server and CA
  # bundle serve the chroot's downloads (the bundle holds the CAs this machine's traffic needs).
  cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
  mkdir -p "$rootfs/tmp/vsnap-build"
  cp "$HERE/pyproject.toml" "$rootfs/tmp/vsnap-build/"
  cp "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" "$rootfs/tmp/vsnap-build/ca.crt"
  rm -f "$rootfs/etc/pip.conf"
  mount --bind /proc "$rootfs/proc"; mount --bind /sys "$rootfs/sys"; mount --bind /dev "$rootfs/dev"
  local status=0
  chroot "$rootfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin PIP_CERT=/tmp/vsnap-build/ca.crt \
    /bin/sh -euc '
    test -x /opt/vsnap/venv/bin/python || python3 -m venv /opt/vsnap/venv
    deps=$(python3 -c "import tomllib; p = tomllib.load(open(\"/tmp/vsnap-build/pyproject.toml\",\"rb\"))[\"project\"]; print(\"\\n\".join(p[\"dependencies\"] + p[\"optional-dependencies\"][\"test\"]))")
    /opt/vsnap/venv/bin/pip install -q --disable-pip-version-check $deps
    mkdir -p /opt/vsnap/wheels
    /opt/vsnap/venv/bin/pip download -q --disable-pip-version-check -d /opt/vsnap/wheels "setuptools>=68" wheel
    printf "[global]\nno-index = true\nfind-links = /opt/vsnap/wheels\ndisable-pip-version-check = true\n" > /etc/pip.conf
    for unit in systemd-networkd ssh nginx smbd nfs-server zfs-import-cache zfs-mount zfs.target zfs-zed; do
      systemctl enable -q "$unit" 2>/dev/null || echo "kernel-lab: no unit $unit to enable" >&2
    done
    systemctl mask -q nmbd apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service \
      fstrim.timer man-db.timer systemd-networkd-wait-online.service
    rm -f /etc/nginx/sites-enabled/default
  ' || status=$?
  umount "$rootfs/proc" "$rootfs/sys" "$rootfs/dev"
  [ "$status" = 0 ] || die "setting up the guest's Python environment failed ($status)"
  rm -rf "$rootfs/tmp/vsnap-build" "$rootfs/var/cache/apt/archives/"*.deb
  : > "$rootfs/etc/resolv.conf"
  : > "$rootfs/etc/machine-id"
}

build() {
  if [ -f "$IMAGE/root.img" ]; then
    log "image up to date: $IMAGE"
    return
  fi
  command -v mmdebstrap >/dev/null && command -v qemu-system-x86_64 >/dev/null \
    || die "mmdebstrap and qemu-system-x86 are needed (make kernel-lab installs them)"
  mkdir -p "$KLAB/ssh" "$KLAB/images"
  [ -f "$SSHKEY" ] || ssh-keygen -q -t ed25519 -N '' -C vsnap-kernel-lab -f "$SSHKEY"
  local rootfs=$KLAB/images/.rootfs-$(bootstrap_key)
  find "$KLAB/images" -maxdepth 1 -name '.rootfs-*' ! -path "$rootfs" ! -path "$rootfs.done" -exec rm -rf {} +
  find "$KLAB/images" -maxdepth 1 -name '.build-*' -exec rm -rf {} +
  local started=$SECONDS
  if [ ! -f "$rootfs.done" ]; then
    log "bootstrapping the guest's Debian (mmdebstrap, the ZFS DKMS build included: minutes)"
    rm -rf "$rootfs" "$rootfs.done"
    bootstrap_rootfs "$rootfs"
    touch "$rootfs.done"
  fi
  customize_rootfs "$rootfs"  # in place: every step can run again
  local work=$KLAB/images/.build-${IMAGE##*/}
  rm -rf "$work"
  mkdir -p "$work"
  cp "$rootfs"/boot/vmlinuz-* "$work/vmlinuz"
  cp "$rootfs"/boot/initrd.img-* "$work/initrd.img"
  truncate -s 6G "$work/root.img"
  mkfs.ext4 -q -L root -d "$rootfs" "$work/root.img"
  rm -rf "$IMAGE"
  mv "$work" "$IMAGE"
  find "$KLAB/images" -maxdepth 1 -mindepth 1 -type d ! -name '.*' ! -path "$IMAGE" -exec rm -rf {} +
  log "image built in $((SECONDS - started)) s: $IMAGE"
}

# -- boot -----------------------------------------------------------------------------------
running() {
  [ -f "$RUN/qemu.pid" ] && local pid && pid=$(cat "$RUN/qemu.pid") && [ -d "/proc/$pid" ] \
    && grep -q qemu-system "/proc/$pid/cmdline" 2>/dev/null
}

boot() {
  if running; then
    log "guest already running (pid $(cat "$RUN/qemu.pid"))"
    return
  fi
  mkdir -p "$RUN"
  # A fresh overlay on the read-only base: every boot starts from the built image.
  rm -f "$RUN/overlay.qcow2"
  qemu-img create -q -f qcow2 -b "$IMAGE/root.img" -F raw "$RUN/overlay.qcow2"
  local drives=() i
  for i in $(seq 1 "$NDISKS"); do
    # Blank disks too: the fresh install has a new system id, and would not adopt (nor
    # reuse) the pools an earlier boot left on them.
    rm -f "$RUN/disk$i.img"
    truncate -s 1G "$RUN/disk$i.img"
    drives+=(-drive "file=$RUN/disk$i.img,format=raw,if=none,id=d$i"
             -device "virtio-blk-pci,drive=d$i,serial=vsnapdisk$i")
  done
  local fwd="hostfwd=tcp:127.0.0.1:$API_PORT-:8900,hostfwd=tcp:127.0.0.1:$SSH_PORT-:22"
  fwd+=",hostfwd=tcp:127.0.0.1:$ISCSI_PORT-:3260,hostfwd=tcp:127.0.0.1:$NFS_PORT-:2049"
  fwd+=",hostfwd=tcp:127.0.0.1:$SMB_PORT-:445"
  : > "$RUN/console.log"
  qemu-system-x86_64 -accel tcg,thread=multi -cpu max -smp 2 -m "${KLAB_MEMORY:-4096}" \
    -kernel "$IMAGE/vmlinuz" -initrd "$IMAGE/initrd.img" \
    -append "console=ttyS0 root=LABEL=root rw systemd.show_status=false" \
    -drive "file=$RUN/overlay.qcow2,format=qcow2,if=virtio" "${drives[@]}" \
    -netdev "user,id=n0,net=198.18.64.0/24,host=198.18.64.2,dns=198.18.64.3,$fwd" \
    -device virtio-net-pci,netdev=n0 \
    -virtfs "local,path=$HERE,mount_tag=vsnapsrc,security_model=none,readonly=on" \
    -display none -serial "file:$RUN/console.log" -daemonize -pidfile "$RUN/qemu.pid"
  log "booting (pid $(cat "$RUN/qemu.pid")); console: $RUN/console.log"
  local deadline=$((SECONDS + ${KLAB_BOOT_TIMEOUT:-600}))
  until guest_ssh true 2>/dev/null; do
    running || die "the guest stopped while booting; see $RUN/console.log"
    [ $SECONDS -lt $deadline ] || die "no SSH from the guest within ${KLAB_BOOT_TIMEOUT:-600} s; see $RUN/console.log"
    sleep 3
  done
  log "guest up in $((SECONDS - deadline + ${KLAB_BOOT_TIMEOUT:-600})) s"
}

# This tree, installed as production installs it: `make install` from a copy of the source,
# the units enabled and started under systemd, nginx in front.
install_tree() {
  # The admin account's password: the lab's own, so the host's tests can log in.
  [ -f "$KLAB/admin.password" ] || (umask 077; openssl rand -hex 12 > "$KLAB/admin.password")
  guest_ssh "VSNAP_ADMIN_PASSWORD=$(cat "$KLAB/admin.password") bash -s" <<'EOF_GUEST'
    set -e
    mountpoint -q /mnt/vsnap-src || mount /mnt/vsnap-src
    rm -rf /root/vsnap-src && mkdir -p /root/vsnap-src
    tar -C /mnt/vsnap-src -cf - --exclude=.git --exclude=.venv --exclude=.stamps --exclude=__pycache__ . \
      | tar -C /root/vsnap-src -xf -
    cd /root/vsnap-src
    make install PYTHON=python3 > /var/log/vsnap-install.log 2>&1 || { tail -30 /var/log/vsnap-install.log; exit 1; }
    # The README's production steps for Samba: vsnap writes its shares next to the system's
    # smb.conf, which includes them as the last line of [global].
    grep -qx 'VSNAP_SMB_CONF=/etc/samba/smb.conf' /etc/default/vsnap 2>/dev/null \
      || echo 'VSNAP_SMB_CONF=/etc/samba/smb.conf' >> /etc/default/vsnap
    grep -q '^ *include = /etc/samba/shares.conf' /etc/samba/smb.conf || {
      awk '/^\[/ && !/^\[global\]/ && !done { print "include = /etc/samba/shares.conf"; done = 1 } { print }
           END { if (!done) print "include = /etc/samba/shares.conf" }' /etc/samba/smb.conf > /etc/samba/smb.conf.new
      touch /etc/samba/shares.conf
      mv /etc/samba/smb.conf.new /etc/samba/smb.conf
      systemctl restart smbd
    }
    systemctl daemon-reload
    systemctl enable -q vsnap-api nginx
    systemctl restart vsnap-api
    systemctl reload-or-restart nginx
EOF_GUEST
  local deadline=$((SECONDS + 300))
  until curl -sk -o /dev/null -w '%{http_code}' "https://127.0.0.1:$API_PORT/api/system" | grep -q '^401$'; do
    [ $SECONDS -lt $deadline ] || { guest_ssh 'systemctl status vsnap-api nginx --no-pager | tail -30' || true;
                                    die "the guest's API did not answer within 300 s"; }
    sleep 2
  done
  log "the guest's API answers at https://127.0.0.1:$API_PORT"
}

down() {
  if running; then
    local pid
    pid=$(cat "$RUN/qemu.pid")
    guest_ssh 'systemctl poweroff' 2>/dev/null || true
    for _ in $(seq 1 60); do [ -d "/proc/$pid" ] || break; sleep 1; done
    [ -d "/proc/$pid" ] && kill -9 "$pid" 2>/dev/null || true
    log "guest stopped (pid $pid)"
  else
    log "no guest running"
  fi
  rm -f "$RUN/qemu.pid" "$RUN/overlay.qcow2"
}

IMAGE=$KLAB/images/$(image_key)  # after the build functions: their text is part of the key

case "${1:-}" in
  build) build ;;
  up) build; boot; install_tree ;;
  install) install_tree ;;
  ssh) shift; guest_ssh "$@" ;;
  down) down ;;
  status) if running; then log "running (pid $(cat "$RUN/qemu.pid")), image $IMAGE"; else log "not running; image $IMAGE"; fi ;;
  key) echo "$IMAGE" ;;
  *) echo "usage: $0 build|up|install|ssh CMD|down|status" >&2; exit 2 ;;
esac
