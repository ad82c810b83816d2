#!/usr/bin/env bash
# vsnap development/CI lab: real userspace storage services and lab disks.
#
#   lab/lab.sh up|down|status
#
# Environment:
#   VSNAP_STATE          appliance state directory      (default /var/lib/vsnap)
#   VSNAP_LAB_DISKS      number of lab disks             (default 8)
#   VSNAP_LAB_DISK_SIZE  size of a new lab disk image    (default 1G)
#   VSNAP_SSH_PORT       port of the replication sshd    (default 8922)
#   VSNAP_LAB_STACK      userspace (default) or kernel: on a machine with the production
#                        stack (OpenZFS, LIO, the kernel NFS server, run by systemd, as in
#                        the kernel lab's guest) only disks, sshd and an smbd of the
#                        appliance's own (beside the system's) are the lab's; the appliance
#                        gets an exports file of its own under /etc/exports.d
#   VSNAP_LAB_SMB_PORT   port of the appliance's own smbd (default 445)
#   VSNAP_LAB_SHARED     the machine-wide part of the lab (default /var/lib/vsnap-lab)
#
# Layout of an appliance's lab:
#   $VSNAP_STATE/lab/disks/diskN.img   sparse disk images (never deleted here)
#   $VSNAP_STATE/lab/run/NAME.pid      pid of its own daemons (sshd, smbd)
#   $VSNAP_STATE/lab/log/NAME.log      their logs
#   $VSNAP_STATE/lab/lab.env           VSNAP_DISKS=/dev/loopA,... and the appliance's other
#                                      lab settings (export id base, ganesha's pidfile)
#   $VSNAP_STATE/lab/loop.map          last loop device of each image
#   $VSNAP_STATE/nfs/exports.conf      its NFS exports (written by the appliance)
#   $VSNAP_STATE/samba/smb.conf        its smbd (+ shares.conf, written by the appliance)
#   $VSNAP_STATE/ssh/sshd_config       its replication sshd (+ host key, authorized_keys)
# and of the machine-wide part, shared by every appliance on the machine:
#   $VSNAP_LAB_SHARED/appliances       "SLOT STATE" of every appliance ever set up here: the
#                                      slot gives its NFS export ids a range of their own
#   $VSNAP_LAB_SHARED/run, log         pids and logs of the shared daemons
#   $VSNAP_LAB_SHARED/nfs/ganesha.conf %includes appliances.conf: the exports.conf of every
#                                      appliance whose lab is up (its sshd runs)
#
# zfs-fuse, tgtd, rpcbind and ganesha.nfsd are machine-wide: `up` starts each one only when
# it is not already running and tells a running ganesha of the appliance's exports; `down`
# stops only what the lab started, and only when no other appliance's lab is up. sshd and
# smbd are the appliance's own (own ports), so each appliance's shares and Samba accounts
# are its own. This script never installs packages (the Makefile does).
set -euo pipefail
set +m   # no job control: a background job is then no process-group leader,
         # so `setsid` execs in place and $! is the daemon's own pid.

PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH
export LC_ALL=C

VSNAP_STATE=${VSNAP_STATE:-/var/lib/vsnap}
VSNAP_LAB_DISKS=${VSNAP_LAB_DISKS:-8}
VSNAP_LAB_DISK_SIZE=${VSNAP_LAB_DISK_SIZE:-1G}
VSNAP_SSH_PORT=${VSNAP_SSH_PORT:-8922}
VSNAP_LAB_STACK=${VSNAP_LAB_STACK:-userspace}
VSNAP_LAB_SMB_PORT=${VSNAP_LAB_SMB_PORT:-445}
VSNAP_LAB_SHARED=${VSNAP_LAB_SHARED:-/var/lib/vsnap-lab}

STATE=$(realpath -m -- "$VSNAP_STATE")   # losetup reports canonical paths
LAB=$STATE/lab
RUN=$LAB/run
LOGDIR=$LAB/log
DISKS=$LAB/disks
LABENV=$LAB/lab.env
LOOPMAP=$LAB/loop.map
EXPORTED=$LAB/exported-pools
NFSDIR=$STATE/nfs
SMBDIR=$STATE/samba
SSHDIR=$STATE/ssh
SMB_CONF=$SMBDIR/smb.conf
SSHD_CONF=$SSHDIR/sshd_config

SHARED=$(realpath -m -- "$VSNAP_LAB_SHARED")
SHARED_RUN=$SHARED/run
SHARED_LOG=$SHARED/log
REGISTRY=$SHARED/appliances
SHARED_NFS=$SHARED/nfs
GANESHA_CONF=$SHARED_NFS/ganesha.conf
GANESHA_INCLUDES=$SHARED_NFS/appliances.conf
# Each appliance's NFS export ids (nfs-ganesha's Export_Id is 16 bits; the kernel's fsid) get
# a range of their own: slot * EXPORT_ID_SLOT + the share's id. Slot 0 is the production
# appliance's default state (/var/lib/vsnap, as `make run` uses): its ids stay its share ids.
EXPORT_ID_SLOT=4096
MAX_SLOT=15

READY_TIMEOUT=30   # seconds a service may take to become ready
STOP_TIMEOUT=30    # seconds a service may take to exit after SIGTERM

# Services in start order; `down` stops them in reverse.
SHARED_SERVICES=(zfs-fuse tgtd rpcbind ganesha)
OWN_SERVICES=(smbd sshd)
SERVICES=("${SHARED_SERVICES[@]}" "${OWN_SERVICES[@]}")

STARTED=()
ALREADY=()
JUST_STARTED=no

log()  { printf 'lab: %s\n' "$*"; }
warn() { printf 'lab: WARNING: %s\n' "$*" >&2; }
die()  { printf 'lab: ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- helpers

# write_file PATH CONTENT: write atomically when absent or different.
# Returns 0 when the file was (re)written, 1 when it already had this content.
write_file() {
    local path=$1 content=$2 tmp
    if [[ -f $path ]] && [[ "$(cat -- "$path")" == "$content" ]]; then
        return 1
    fi
    tmp=$(mktemp "$path.tmp.XXXXXX")
    printf '%s\n' "$content" >"$tmp"
    chmod 644 "$tmp"
    mv -f -- "$tmp" "$path"
    return 0
}

# create_empty PATH [MODE]: create an empty file only when it does not exist.
create_empty() {
    local path=$1 mode=${2:-644}
    if [[ ! -e $path ]]; then
        : >"$path"
        chmod "$mode" "$path"
    fi
}

# alive PID: the process exists and is not a zombie.
alive() {
    local pid=$1 st
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    st=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [[ -n $st && $st != Z && $st != X ]]
}

# pgrep_alive NAME: a live (non-zombie) process has exactly this name. PID 1
# here reaps orphans lazily, so a stopped daemon can linger as a zombie.
pgrep_alive() {
    local p
    for p in $(pgrep -x "$1" 2>/dev/null || true); do
        alive "$p" && return 0
    done
    return 1
}

cmdline_of() { tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null || true; }

svc_binary() {
    case $1 in
        zfs-fuse) echo zfs-fuse ;;
        tgtd)     echo tgtd ;;
        rpcbind)  echo rpcbind ;;
        ganesha)  echo ganesha.nfsd ;;
        smbd)     echo smbd ;;
        sshd)     echo sshd ;;
        *) die "unknown service $1" ;;
    esac
}

svc_port() {
    case $1 in
        tgtd) echo 3260 ;; rpcbind) echo 111 ;; ganesha) echo 2049 ;;
        smbd) echo "$VSNAP_LAB_SMB_PORT" ;;  sshd) echo "$VSNAP_SSH_PORT" ;; *) echo "" ;;
    esac
}

# is_service_process NAME PID: /proc/PID/cmdline is that service's daemon
# (sshd rewrites its title to "sshd: /usr/sbin/sshd -D -f CONF [listener] ...")
# and, for the services with a lab config file, runs with that file.
is_service_process() {
    local name=$1 pid=$2 bin cmd first
    alive "$pid" || return 1
    bin=$(svc_binary "$name")
    cmd=$(cmdline_of "$pid")
    first=${cmd%% *}
    [[ ${first##*/} == "$bin" || $first == "$bin:" ]] || return 1
    case $name in   # the lab's own configuration, not another instance's
        sshd)    [[ $cmd == *" -f $SSHD_CONF"* ]] || return 1 ;;
        ganesha) [[ $cmd == *" -f $GANESHA_CONF"* ]] || return 1 ;;
        smbd)    [[ $cmd == *" -s $SMB_CONF"* ]] || return 1 ;;
    esac
    return 0
}

is_shared() { [[ " ${SHARED_SERVICES[*]} " == *" $1 "* ]]; }
pidfile() { if is_shared "$1"; then echo "$SHARED_RUN/$1.pid"; else echo "$RUN/$1.pid"; fi; }
logfile() { if is_shared "$1"; then echo "$SHARED_LOG/$1.log"; else echo "$LOGDIR/$1.log"; fi; }

# our_pid NAME [keep]: prints the pid when the lab's pidfile names a live
# process of that service; removes a stale pidfile (unless "keep").
our_pid() {
    local name=$1 keep=${2:-} f pid
    f=$(pidfile "$name")
    [[ -f $f ]] || return 1
    pid=$(head -n1 "$f" 2>/dev/null | tr -dc 0-9)
    if [[ -n $pid ]] && is_service_process "$name" "$pid"; then
        echo "$pid"
        return 0
    fi
    [[ $keep == keep ]] || rm -f -- "$f"
    return 1
}

port_listening() {
    local port=$1
    [[ -n $port ]] || return 1
    [[ -n $(ss -Hltn "sport = :$port" 2>/dev/null) ]]
}

# running_anywhere NAME: the service (or something on its port) runs on this
# machine, started by anybody.
running_anywhere() {
    local name=$1 bin port
    bin=$(svc_binary "$name")
    port=$(svc_port "$name")
    if [[ $name != sshd ]] && pgrep_alive "$bin"; then
        return 0
    fi
    port_listening "$port"
}

log_tail() {
    local f
    f=$(logfile "$1")
    if [[ -f $f ]]; then
        printf -- '--- last lines of %s ---\n' "$f" >&2
        tail -n 25 -- "$f" >&2 || true
        printf -- '---\n' >&2
    fi
}

# start_daemon NAME CMD...: start CMD detached (own session, stdin /dev/null,
# output to the service log, no inherited descriptors above 2, default signal
# dispositions: a background job of a script starts with SIGINT and SIGQUIT
# ignored) and record its pid. setsid, the wrapper shell and env all exec, so
# the recorded pid is the daemon's.
start_daemon() {
    local name=$1; shift
    local logf pid
    logf=$(logfile "$name")
    printf '=== %s lab: starting %s\n' "$(date '+%F %T')" "$*" >>"$logf"
    # shellcheck disable=SC2016
    setsid bash -c '
        for fd in /proc/$$/fd/*; do
            fd=${fd##*/}
            if [[ $fd =~ ^[0-9]+$ ]] && (( fd > 2 )); then eval "exec $fd>&-"; fi
        done 2>/dev/null
        exec env --default-signal "$@"' "lab-$name" "$@" </dev/null >>"$logf" 2>&1 &
    pid=$!
    echo "$pid" >"$(pidfile "$name").tmp"
    mv -f -- "$(pidfile "$name").tmp" "$(pidfile "$name")"
    echo "$pid"
}

# stop_pid NAME PID: SIGTERM, wait up to STOP_TIMEOUT, then SIGKILL.
stop_pid() {
    local name=$1 pid=$2 i
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_TIMEOUT * 4; i++)); do
        alive "$pid" || return 0
        sleep 0.25
    done
    warn "$name (pid $pid) did not exit ${STOP_TIMEOUT}s after SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 40; i++)); do
        alive "$pid" || return 0
        sleep 0.25
    done
    warn "$name (pid $pid) still alive after SIGKILL"
    return 1
}

# wait_ready NAME PID CHECK...: wait until CHECK succeeds while PID lives.
wait_ready() {
    local name=$1 pid=$2; shift 2
    local i
    for ((i = 0; i < READY_TIMEOUT * 4; i++)); do
        if ! alive "$pid"; then
            rm -f -- "$(pidfile "$name")"
            log_tail "$name"
            die "$name (pid $pid) exited during start-up; log: $(logfile "$name")"
        fi
        if "$@" >/dev/null 2>&1; then
            if ! is_service_process "$name" "$pid"; then
                log_tail "$name"
                die "$name is ready but pid $pid is not the daemon ($(cmdline_of "$pid"))"
            fi
            return 0
        fi
        sleep 0.25
    done
    log_tail "$name"
    warn "$name (pid $pid) not ready after ${READY_TIMEOUT}s; stopping it"
    stop_pid "$name" "$pid" || true
    rm -f -- "$(pidfile "$name")"
    die "$name did not become ready within ${READY_TIMEOUT}s; log: $(logfile "$name")"
}

check_zpool()   { timeout 10 zpool list; }
check_tgtd()    { timeout 10 tgtadm --lld iscsi --op show --mode target; }
check_rpcbind() { timeout 10 rpcinfo -p 127.0.0.1; }
check_port()    { port_listening "$1"; }

# The appliance's lab, then the machine-wide part (always in this order).
lock_lab() {
    exec 9>"$LAB/.lock"
    flock -w 300 9 || die "another lab.sh holds $LAB/.lock"
    mkdir -p "$SHARED"
    exec 8>"$SHARED/.lock"
    flock -w 300 8 || die "another lab.sh holds $SHARED/.lock"
}

mkdirs() {
    mkdir -p "$RUN" "$LOGDIR" "$DISKS" "$NFSDIR" "$SMBDIR" "$SSHDIR" "$SHARED_RUN" "$SHARED_LOG" "$SHARED_NFS"
}

# ---------------------------------------------------------------- appliances on the machine

# slot_of STATE: the appliance's slot, given once and kept (its export ids must not change
# while clients hold file handles); entries of state directories that are gone are dropped.
slot_of() {
    local state=$1 slot st taken=() kept=""
    if [[ -f $REGISTRY ]]; then
        while read -r slot st; do
            [[ $slot =~ ^[0-9]+$ && -n $st ]] || continue
            if [[ $st == "$state" ]]; then echo "$slot"; return 0; fi
            [[ -d $st ]] || continue
            taken+=("$slot")
            kept+="$slot $st"$'\n'
        done <"$REGISTRY"
    fi
    if [[ $state == /var/lib/vsnap ]]; then
        slot=0
    else
        for ((slot = 1; slot <= MAX_SLOT; slot++)); do
            [[ " ${taken[*]} " == *" $slot "* ]] || break
        done
        ((slot <= MAX_SLOT)) || die "more than $MAX_SLOT lab appliances in $REGISTRY: remove the state of one"
    fi
    [[ " ${taken[*]} " == *" $slot "* ]] && die "slot $slot of $REGISTRY is taken by another state"
    printf '%s%s %s\n' "$kept" "$slot" "$state" >"$REGISTRY.tmp"
    mv -f -- "$REGISTRY.tmp" "$REGISTRY"
    echo "$slot"
}

# lab_is_up STATE: that appliance's lab runs (its own sshd lives).
lab_is_up() {
    local st=$1 pid
    pid=$(head -n1 "$st/lab/run/sshd.pid" 2>/dev/null | tr -dc 0-9)
    [[ -n $pid ]] && alive "$pid" && [[ $(cmdline_of "$pid") == *" -f $st/ssh/sshd_config"* ]]
}

# up_appliances [EXCLUDE]: state directories of the appliances whose lab is up.
up_appliances() {
    local exclude=${1:-} slot st
    [[ -f $REGISTRY ]] || return 0
    while read -r slot st; do
        [[ -n $st && $st != "$exclude" ]] || continue
        lab_is_up "$st" && echo "$st"
    done <"$REGISTRY"
    return 0
}

# ganesha_includes [EXCLUDE]: the one ganesha serves the exports of every appliance whose lab
# is up; a running ganesha rereads them at SIGHUP.
ganesha_includes() {
    local exclude=${1:-} st body="# Written by lab/lab.sh: the exports of each appliance whose lab is up."
    while read -r st; do
        [[ -n $st ]] || continue
        body+=$'\n'"%include \"$st/nfs/exports.conf\""
    done < <({ up_appliances "$exclude"; [[ -n $exclude ]] || echo "$STATE"; } | sort -u)
    write_file "$GANESHA_INCLUDES" "$body" || return 0
    local pid glog size i
    if pid=$(our_pid ganesha); then
        glog=$(logfile ganesha)
        size=$(stat -c %s "$glog" 2>/dev/null || echo 0)
        kill -HUP "$pid" 2>/dev/null || true
        # Wait for the reread: a pool whose export ganesha still holds cannot be exported.
        for ((i = 0; i < 40; i++)); do
            tail -c +"$((size + 1))" "$glog" 2>/dev/null | sed -n '/initiating export list reload/,$p' \
                | grep -q 'Reread exports complete' && break
            sleep 0.25
        done
        log "ganesha (pid $pid) told of the exports of: $(grep -c '^%include' "$GANESHA_INCLUDES") appliance(s)"
    fi
}

# ---------------------------------------------------------------- disks

# Unused real disks: TYPE=disk, not loop/zram/ram, size > 0, no children
# (partitions, holders), no filesystem/partition table, not mounted.
count_unused_real_disks() {
    local n=0 name size type lines rest
    while read -r name size type; do
        [[ $type == disk ]] || continue
        case $name in loop* | zram* | ram*) continue ;; esac
        [[ $size =~ ^[0-9]+$ ]] && ((size > 0)) || continue
        lines=$(lsblk -nr -o NAME,FSTYPE,PTTYPE,MOUNTPOINT "/dev/$name" 2>/dev/null) || continue
        [[ $(wc -l <<<"$lines") -eq 1 ]] || continue
        read -r _ rest <<<"$lines" || true
        [[ -z $rest ]] || continue
        n=$((n + 1))
    done < <(lsblk -dnb -o NAME,SIZE,TYPE 2>/dev/null)
    echo "$n"
}

# Lab images in numeric order.
list_images() {
    local f
    for f in "$DISKS"/disk*.img; do
        [[ -f $f ]] || continue
        [[ ${f##*/} =~ ^disk([0-9]+)\.img$ ]] || continue
        printf '%s %s\n' "${BASH_REMATCH[1]}" "$f"
    done | sort -n | cut -d' ' -f2-
}

# loops_of FILE: every loop device backed by FILE.
loops_of() { losetup -j "$1" 2>/dev/null | cut -d: -f1 || true; }

all_lab_loops() {
    local img
    while read -r img; do
        [[ -n $img ]] || continue
        loops_of "$img"
    done < <(list_images)
}

map_lookup() {
    [[ -f $LOOPMAP ]] || return 1
    awk -v img="$1" '$1 == img { print $2; exit }' "$LOOPMAP"
}

# attach_previous IMG: attach IMG to the loop device it had last time (from
# loop.map) when that one is free, so pool device paths stay stable across
# down/up; prints the device, or nothing.
attach_previous() {
    local img=$1 prev
    prev=$(map_lookup "${img##*/}" || true)
    if [[ -n $prev && -b $prev ]] && ! losetup "$prev" >/dev/null 2>&1; then
        if losetup "$prev" "$img" 2>/dev/null; then
            echo "$prev"
        fi
    fi
}

write_labenv() {
    local devs=("$@") joined slot env
    joined=$(IFS=,; echo "${devs[*]}")
    slot=$(slot_of "$STATE")
    env="VSNAP_DISKS=$joined"$'\n'"VSNAP_NFS_EXPORT_ID_BASE=$((slot * EXPORT_ID_SLOT))"
    if [[ $VSNAP_LAB_STACK == kernel ]]; then
        env+=$'\n'"VSNAP_KERNEL_EXPORTS=$(kernel_exports_file)"
    else
        env+=$'\n'"VSNAP_GANESHA_PIDFILE=$(pidfile ganesha)"$'\n'"VSNAP_GANESHA_LOG=$(logfile ganesha)"
    fi
    write_file "$LABENV" "$env" || true
}

DISK_DEVS=()
DISKS_ATTACHED=()
DISKS_CREATED=()

disks_up() {
    local want=$VSNAP_LAB_DISKS unused i img dev map=""
    [[ $want =~ ^[0-9]+$ ]] || die "VSNAP_LAB_DISKS must be a number, not '$want'"
    # With the kernel stack the machine's real disks belong to the appliance installed there.
    if [[ $VSNAP_LAB_STACK == kernel ]]; then unused=0; else unused=$(count_unused_real_disks); fi
    if ((unused < want)); then
        for ((i = 1; i <= want; i++)); do
            img=$DISKS/disk$i.img
            if [[ ! -e $img ]]; then
                truncate -s "$VSNAP_LAB_DISK_SIZE" "$img"
                DISKS_CREATED+=("disk$i.img")
            fi
        done
    else
        log "$unused unused real disks >= $want: no new lab disk images"
    fi
    local images=() pass
    mapfile -t images < <(list_images)
    # Pass 1 gives images their previous loop device where it is free; only
    # then pass 2 takes any free one (so one taken device moves one image).
    for pass in previous any; do
        for img in "${images[@]}"; do
            [[ -n $img ]] || continue
            [[ -n $(loops_of "$img") ]] && continue
            if [[ $pass == previous ]]; then
                dev=$(attach_previous "$img")
            else
                dev=$(losetup -f --show "$img") || die "losetup -f --show $img failed"
            fi
            [[ -n $dev ]] && DISKS_ATTACHED+=("$dev")
        done
    done
    for img in "${images[@]}"; do
        [[ -n $img ]] || continue
        dev=$(loops_of "$img" | head -n1)
        [[ -n $dev ]] || die "$img is not attached"
        DISK_DEVS+=("$dev")
        map+="${img##*/} $dev"$'\n'
    done
    if [[ -n $map ]]; then
        write_file "$LOOPMAP" "${map%$'\n'}" || true
    fi
    write_labenv "${DISK_DEVS[@]}"
}

# ---------------------------------------------------------------- configs

ganesha_config() {
    mkdir -p "$SHARED_NFS/recovery"
    create_empty "$NFSDIR/exports.conf"   # the appliance owns its content
    local conf
    conf=$(cat <<EOF
# Written by lab/lab.sh: the machine's one ganesha; each appliance's exports.conf (generated
# by vsnap) is included through appliances.conf.
NFS_CORE_PARAM {
    Protocols = 3, 4;
    Enable_NLM = false;
    Enable_RQUOTA = false;
}

NFS_KRB5 {
    Active_krb5 = false;
}

NFSV4 {
    Graceless = true;
    RecoveryRoot = "$SHARED_NFS/recovery";
}

LOG {
    Default_Log_Level = EVENT;
    Components {
        ALL = EVENT;
    }
}

%include "$GANESHA_INCLUDES"
EOF
)
    write_file "$GANESHA_CONF" "$conf"
}

samba_config() {
    local d
    for d in private lock state cache run ncalrpc log binddns; do
        mkdir -p "$SMBDIR/$d"
    done
    chmod 700 "$SMBDIR/private"
    create_empty "$SMBDIR/shares.conf"   # the appliance owns its content
    local conf
    conf=$(cat <<EOF
# Written by lab/lab.sh: the smbd of the appliance at $STATE, on its own port; shares live
# in shares.conf (generated by vsnap).
[global]
    server role = standalone server
    workgroup = WORKGROUP
    smb ports = $VSNAP_LAB_SMB_PORT
    disable netbios = yes
    disable spoolss = yes
    load printers = no
    printing = bsd
    printcap name = /dev/null
    server min protocol = SMB2
    passdb backend = tdbsam
    private dir = $SMBDIR/private
    lock directory = $SMBDIR/lock
    state directory = $SMBDIR/state
    cache directory = $SMBDIR/cache
    pid directory = $SMBDIR/run
    ncalrpc dir = $SMBDIR/ncalrpc
    binddns dir = $SMBDIR/binddns
    usershare path =
    log file = $SMBDIR/log/log.%m
    max log size = 1000
    include = $SMBDIR/shares.conf
EOF
)
    write_file "$SMB_CONF" "$conf"
}

sshd_config() {
    local key=$SSHDIR/ssh_host_ed25519_key
    if [[ ! -f $key ]]; then
        ssh-keygen -q -t ed25519 -N '' -C "vsnap-lab-host" -f "$key" >/dev/null
    fi
    create_empty "$SSHDIR/authorized_keys" 600
    local conf
    conf=$(cat <<EOF
# Written by lab/lab.sh: replication sshd of the appliance at $STATE.
Port $VSNAP_SSH_PORT
HostKey "$key"
PidFile "$RUN/sshd.pid"
AuthorizedKeysFile "$SSHDIR/authorized_keys"
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
AllowTcpForwarding no
X11Forwarding no
PrintMotd no
# sshd runs the forced command through root's shell, and bash sources ~/.bashrc for a
# command over SSH unless SHLVL says it is nested. A slow or wedged .bashrc (a stale pyenv
# rehash lock made every login wait 60 s on the lab machine) must not stall replication.
SetEnv SHLVL=1
EOF
)
    write_file "$SSHD_CONF" "$conf"
}

# ---------------------------------------------------------------- services

# start_shared NAME CONFIG_CHANGED CHECK... -- CMD...: start a machine-wide
# service unless it runs already.
start_shared() {
    local name=$1 changed=$2; shift 2
    local check=() cmd=() pid
    JUST_STARTED=no
    while [[ $1 != -- ]]; do check+=("$1"); shift; done
    shift
    cmd=("$@")
    if pid=$(our_pid "$name"); then
        ALREADY+=("$name(ours pid $pid)")
        [[ $changed == yes ]] && warn "$name config changed while it runs; run down+up to apply"
        return 0
    fi
    if running_anywhere "$name"; then
        ALREADY+=("$name(not ours)")
        return 0
    fi
    pid=$(start_daemon "$name" "${cmd[@]}")
    wait_ready "$name" "$pid" "${check[@]}"
    STARTED+=("$name(pid $pid)")
    JUST_STARTED=yes
}

# A ganesha of an older lab served only the appliance whose lab started it (from that
# appliance's state); the one of the machine's lab replaces it.
stop_older_lab_ganesha() {
    local p cmd conf
    for p in $(pgrep -x ganesha.nfsd 2>/dev/null || true); do
        alive "$p" || continue
        cmd=$(cmdline_of "$p")
        [[ $cmd =~ " -f "([^ ]+) ]] || continue
        conf=${BASH_REMATCH[1]}
        [[ $conf != "$GANESHA_CONF" && $conf == */nfs/ganesha.conf ]] || continue
        [[ $(head -n1 "$conf" 2>/dev/null) == "# Written by lab/lab.sh"* ]] || continue
        log "stopping the ganesha of an older lab (pid $p, $conf): it served one appliance only"
        stop_pid ganesha "$p" || true
    done
}

# A daemon of this appliance's own, on its own port: started unless ours already runs;
# `prepare` (a function) runs just before it starts.
start_own() {
    local name=$1 changed=$2 port=$3 port_setting=$4 prepare=$5 pid
    shift 5
    if pid=$(our_pid "$name"); then
        ALREADY+=("$name(ours pid $pid)")
        [[ $changed == yes ]] && warn "$name config changed while it runs; run down+up to apply"
        return 0
    fi
    if port_listening "$port"; then
        die "port $port is in use by something that is not this lab's $name (set $port_setting)"
    fi
    "$prepare"
    pid=$(start_daemon "$name" "$@")
    wait_ready "$name" "$pid" check_port "$port"
    STARTED+=("$name(pid $pid)")
}

# Each appliance's smbd, on its own port (VSNAP_LAB_SMB_PORT), as it has its own sshd: its
# shares and Samba accounts are its own (with the kernel stack the system's smbd serves the
# installed appliance).
start_own_smbd() {
    start_own smbd "$1" "$VSNAP_LAB_SMB_PORT" VSNAP_LAB_SMB_PORT true smbd -F --no-process-group -s "$SMB_CONF"
}

prepare_sshd() {
    mkdir -p /run/sshd
    chmod 755 /run/sshd
    /usr/sbin/sshd -t -f "$SSHD_CONF" || die "sshd -t -f $SSHD_CONF rejected the config"
}

start_sshd() {
    start_own sshd "$1" "$VSNAP_SSH_PORT" VSNAP_SSH_PORT prepare_sshd /usr/sbin/sshd -D -f "$SSHD_CONF"
}

# label_info DEV: "POOL_GUID POOL_NAME RECORDED_PATH" from the first ZFS label
# of DEV (nothing when DEV holds no pool label).
label_info() {
    timeout 30 zdb -l "$1" 2>/dev/null | awk '
        /^LABEL 1/ { exit }
        /^    name: /      { n = $2; gsub(/\047/, "", n) }
        /^    pool_guid: / { pg = $2 }
        /^    guid: /      { own = $2 }
        /^ +guid: /        { last = $2 }
        /^ +path: /        { p = $2; gsub(/\047/, "", p); path[last] = p }
        END { if (pg != "" && own in path) print pg, n, path[own] }'
}

# zfs-fuse opens the device paths of its cache, once, when it starts. When a
# lab image came back on another loop device (the old one was taken
# meanwhile), or zfs-fuse was started while the lab disks were detached, the
# pool is stuck (UNAVAIL/FAULTED, or DEGRADED with a moved disk): export it
# and import it again by guid (scanning /dev). Only pools whose label sits on
# a lab disk are touched.
fix_moved_pools() {
    local dev info guid name path cur health why leaves
    local -A pools=() devs=() moved=()
    for dev in "${DISK_DEVS[@]}"; do
        info=$(label_info "$dev") || true
        [[ -n $info ]] || continue
        read -r guid name path <<<"$info"
        pools[$guid]=$name
        devs[$guid]+="$dev "
    done
    for guid in "${!pools[@]}"; do
        name=${pools[$guid]}
        cur=$(timeout 30 zpool get guid "$name" 2>/dev/null | awk 'NR == 2 { print $3 }') || true
        [[ $cur == "$guid" ]] || continue   # not imported (or another pool of that name)
        health=$(timeout 30 zpool list -H -o health "$name" 2>/dev/null) || true
        [[ $health == ONLINE ]] && continue      # healthy pools are never touched
        leaves=" $(pool_leaves "$name" | tr '\n' ' ') "
        for dev in ${devs[$guid]}; do
            [[ $leaves == *" $dev "* ]] || moved[$guid]=1
        done
        if [[ -n ${moved[$guid]:-} ]]; then
            why="lab disks moved to other loop devices"
        elif [[ $health == UNAVAIL || $health == FAULTED ]]; then
            why="$health (zfs-fuse opened it before the lab disks were attached)"
        else
            continue
        fi
        log "pool $name: $why; re-importing it"
        if timeout 120 zpool export -f "$name" && timeout 120 zpool import "$guid"; then
            timeout 120 zfs mount -a >/dev/null 2>&1 || true
        else
            warn "could not re-import pool $name (guid $guid)"
        fi
    done
}

# Pools that `down` exported from a foreign zfs-fuse: import them again.
reimport_pools() {
    [[ -f $EXPORTED ]] || return 0
    local pool rest=""
    while read -r pool; do
        [[ -n $pool ]] || continue
        if timeout 30 zpool list -H -o name "$pool" >/dev/null 2>&1; then
            continue
        fi
        if timeout 120 zpool import "$pool" >/dev/null 2>&1; then
            log "re-imported pool $pool"
        else
            warn "could not re-import pool $pool (exported by an earlier down)"
            rest+="$pool"$'\n'
        fi
    done <"$EXPORTED"
    if [[ -n $rest ]]; then printf '%s' "$rest" >"$EXPORTED"; else rm -f -- "$EXPORTED"; fi
}

cmd_up() {
    mkdirs
    lock_lab

    # 1. disks, before zfs-fuse: it opens its cached pools when it starts.
    disks_up

    # 2. configs
    local gch=no sch=no ssch=no
    [[ $VSNAP_LAB_STACK == kernel ]] || { ganesha_config && gch=yes; }
    samba_config && sch=yes
    sshd_config && ssch=yes

    # 3. services
    if [[ $VSNAP_LAB_STACK == kernel ]]; then
        # systemd runs OpenZFS, LIO, nfsd and smbd here; the lab adds only its sshd.
        check_zpool >/dev/null || die "zpool list fails: OpenZFS is not loaded"
        [[ -d /sys/kernel/config/target ]] || die "no LIO: /sys/kernel/config/target is absent"
        [[ -e /proc/fs/nfsd/exports ]] || die "the kernel NFS server is not running"
        start_own_smbd "$sch"
        start_sshd "$ssch"
        log "state:   $STATE (kernel stack)"
        log "disks:   $(cat "$LABENV")"
        return
    fi
    start_shared zfs-fuse no check_zpool -- zfs-fuse --no-daemon
    if [[ $JUST_STARTED == yes ]]; then
        # zfs-fuse reopens the pools of its cache but mounts nothing; do what
        # a boot does (Debian's zfs-fuse init script, OpenZFS zfs-mount).
        timeout 120 zfs mount -a || warn "zfs mount -a failed"
    fi
    fix_moved_pools
    reimport_pools
    start_shared tgtd no check_tgtd -- tgtd -f
    start_shared rpcbind no check_rpcbind -- rpcbind -f -w
    stop_older_lab_ganesha
    ganesha_includes   # before ganesha starts (it reads them), or tells the running one
    local gsize glog
    glog=$(logfile ganesha)
    gsize=$(stat -c %s "$glog" 2>/dev/null || echo 0)
    start_shared ganesha "$gch" check_port 2049 -- \
        ganesha.nfsd -F -f "$GANESHA_CONF" -L "$glog" -p "$(pidfile ganesha)"
    if [[ $JUST_STARTED == yes ]]; then
        # ganesha 4.3 carries on after config syntax errors: say so.
        tail -c +"$((gsize + 1))" "$glog" 2>/dev/null \
            | grep -E ':CONFIG :(CRIT|MAJ|FATAL)' >&2 \
            && warn "ganesha.nfsd reported config errors (see above); it runs without the broken part"
    elif ! our_pid ganesha >/dev/null; then
        warn "an NFS server the lab did not start holds port 2049: this appliance's exports are not served"
    fi
    start_own_smbd "$sch"
    start_sshd "$ssch"

    # 4. summary
    log "state:   $STATE (export ids from $(slot_of "$STATE")*$EXPORT_ID_SLOT)"
    log "started: ${STARTED[*]:-nothing}"
    log "already running: ${ALREADY[*]:-nothing}"
    [[ ${#DISKS_CREATED[@]} -gt 0 ]] && log "created images: ${DISKS_CREATED[*]}"
    log "attached now: ${DISKS_ATTACHED[*]:-nothing}"
    log "disks:   $(cat "$LABENV")"
}

# ---------------------------------------------------------------- down

stop_tgtd_targets() {
    local tid
    while read -r tid; do
        [[ -n $tid ]] || continue
        timeout 30 tgtadm --lld iscsi --op delete --mode target --tid "$tid" --force \
            || warn "could not delete tgtd target $tid"
    done < <(timeout 30 tgtadm --lld iscsi --op show --mode target 2>/dev/null \
             | sed -n 's/^Target \([0-9][0-9]*\):.*/\1/p')
}

# tgtd ignores SIGTERM (it catches it and carries on): it leaves on
# `tgtadm --op delete --mode system`, which it refuses while targets exist.
stop_tgtd() {
    local pid=$1 i
    stop_tgtd_targets
    if timeout 30 tgtadm --op delete --mode system >/dev/null 2>&1; then
        for ((i = 0; i < STOP_TIMEOUT * 4; i++)); do
            alive "$pid" || return 0
            sleep 0.25
        done
    else
        warn "tgtadm --op delete --mode system failed"
    fi
    stop_pid tgtd "$pid"
}

# Processes of the lab's smb.conf that smbd started on demand
# (samba-dcerpcd and its rpcd_* workers); they outlive smbd.
stop_samba_helpers() {
    local p cmd pids=()
    for p in $(pgrep -x smbd 2>/dev/null || true); do   # an smbd still uses them
        alive "$p" && [[ $(cmdline_of "$p") == *" $SMB_CONF"* ]] && return 0
    done
    for p in $(pgrep -f -- "--configfile=$SMB_CONF" 2>/dev/null || true); do
        alive "$p" || continue
        cmd=$(cmdline_of "$p")
        case ${cmd%% *} in
            */samba-dcerpcd | */rpcd_*) pids+=("$p") ;;
        esac
    done
    [[ ${#pids[@]} -gt 0 ]] || return 0
    log "stopping samba helpers of $SMB_CONF (pids ${pids[*]})"
    for p in "${pids[@]}"; do
        stop_pid samba-helper "$p" || true
    done
}

stop_ours() {
    local name=$1 pid
    if ! pid=$(our_pid "$name"); then
        rm -f -- "$(pidfile "$name")"
        [[ $name == smbd ]] && stop_samba_helpers
        return 0
    fi
    log "stopping $name (pid $pid)"
    case $name in
        tgtd) stop_tgtd "$pid" || true ;;
        *) stop_pid "$name" "$pid" || true ;;
    esac
    rm -f -- "$(pidfile "$name")"
    [[ $name == smbd ]] && stop_samba_helpers
    return 0
}

# pool_leaves POOL: leaf device paths of POOL from `zpool status`.
pool_leaves() {
    timeout 30 zpool status "$1" 2>/dev/null | awk -v pool="$1" '
        /^[[:space:]]*NAME[[:space:]]+STATE/ { inconf = 1; next }
        /^[[:space:]]*errors:/ { inconf = 0 }
        inconf && NF > 0 {
            d = $1
            if (d == pool) next
            if (d ~ /^(mirror|raidz[0-9]*|replacing|spare)(-[0-9]+)?$/) next
            if (d == "logs" || d == "cache" || d == "spares") next
            if (d !~ /^\//) d = "/dev/" d
            print d
        }'
}

# retry_busy CMD...: zfs-fuse reports a pool busy for a moment after its last user let go.
retry_busy() {
    local i
    for ((i = 0; i < 10; i++)); do
        "$@" 2>/dev/null && return 0
        sleep 0.5
    done
    "$@"
}

# With a foreign zfs-fuse still running: export the pools that live only on
# lab loops; print the loops that must stay attached (in foreign/mixed pools
# or in pools that would not export).
release_pools() {
    local -A lab=() keep=()
    local dev pool leaves allours l
    for dev in "$@"; do lab[$dev]=1; done
    while read -r pool; do
        [[ -n $pool ]] || continue
        leaves=$(pool_leaves "$pool")
        [[ -n $leaves ]] || continue
        allours=yes
        local mine=()
        while read -r l; do
            [[ -n $l ]] || continue
            if [[ -n ${lab[$l]:-} ]]; then mine+=("$l"); else allours=no; fi
        done <<<"$leaves"
        [[ ${#mine[@]} -gt 0 ]] || continue
        if [[ $allours == yes ]]; then
            if retry_busy timeout 120 zpool export "$pool" >&2; then
                log "exported pool $pool (lab disks only)" >&2
                grep -qx -- "$pool" "$EXPORTED" 2>/dev/null || echo "$pool" >>"$EXPORTED"
                continue
            fi
            warn "could not export pool $pool; leaving its lab disks attached"
        else
            warn "pool $pool mixes lab disks and other devices; leaving its lab disks attached"
        fi
        for l in "${mine[@]}"; do keep[$l]=1; done
    done < <(timeout 30 zpool list -H -o name 2>/dev/null || true)
    for l in "${!keep[@]}"; do echo "$l"; done
}

disks_down() {
    local loops=() keep=() remaining=() dev k skip
    mapfile -t loops < <(all_lab_loops | sed '/^$/d')
    [[ ${#loops[@]} -gt 0 ]] || { rm -f -- "$LABENV"; return 0; }
    if [[ $VSNAP_LAB_STACK == kernel ]] || pgrep_alive zfs-fuse; then
        log "ZFS still runs (not the lab's): exporting pools on lab disks"
        mapfile -t keep < <(release_pools "${loops[@]}")
    fi
    for dev in "${loops[@]}"; do
        skip=no
        for k in "${keep[@]}"; do [[ $k == "$dev" ]] && skip=yes; done
        if [[ $skip == yes ]]; then
            remaining+=("$dev")
            continue
        fi
        if losetup -d "$dev"; then
            log "detached $dev"
        else
            warn "could not detach $dev"
            remaining+=("$dev")
        fi
    done
    if [[ ${#remaining[@]} -gt 0 ]]; then
        warn "lab disks still attached: ${remaining[*]}"
        write_labenv "${remaining[@]}"
    else
        rm -f -- "$LABENV"
    fi
}

# kernel_exports_file: this appliance's own file of exports on the kernel stack (named in lab.env).
kernel_exports_file() {
    echo "/etc/exports.d/${STATE##*/}.exports"
}

# kernel_exports_down: the kernel NFS server lets go of this appliance's exports (the lab's own
# file under /etc/exports.d, named in lab.env): its pools can then be exported, and exportfs
# does not fail for every other appliance on paths that went with them.
kernel_exports_down() {
    local file
    file=$(kernel_exports_file)
    [[ -e $file ]] || return 0
    rm -f -- "$file"
    if exportfs -ra; then
        log "withdrew this appliance's NFS exports ($file)"
    else
        warn "exportfs -ra failed after removing $file"
    fi
}

cmd_down() {
    [[ -d $LAB ]] || { log "no lab at $LAB"; return 0; }
    mkdir -p "$RUN" "$SHARED_NFS"
    lock_lab
    local i others
    for ((i = ${#OWN_SERVICES[@]} - 1; i >= 0; i--)); do
        stop_ours "${OWN_SERVICES[i]}"
    done
    if [[ $VSNAP_LAB_STACK != kernel ]]; then
        ganesha_includes "$STATE"   # ganesha lets go of this appliance's exports
        others=$(up_appliances "$STATE" | paste -sd' ' -)
        if [[ -n $others ]]; then
            log "the machine's services stay: the labs of $others are up"
        else
            for ((i = ${#SHARED_SERVICES[@]} - 1; i >= 0; i--)); do
                stop_ours "${SHARED_SERVICES[i]}"
            done
        fi
    else
        kernel_exports_down
    fi
    disks_down
    log "down: done (disk images kept in $DISKS)"
}

# ---------------------------------------------------------------- status

cmd_status() {
    local name pid st img devs
    log "state: $STATE"
    log "labs up on this machine: $(up_appliances | paste -sd' ' -)"
    for name in "${SERVICES[@]}"; do
        if pid=$(our_pid "$name" keep); then
            st="running (ours pid $pid)"
        elif [[ $name == sshd ]]; then
            if port_listening "$VSNAP_SSH_PORT"; then
                st="port $VSNAP_SSH_PORT busy (not ours)"
            else
                st=stopped
            fi
        elif running_anywhere "$name"; then
            st="running (not ours)"
        else
            st=stopped
        fi
        printf '  %-9s %s\n' "$name" "$st"
    done
    if [[ -d $DISKS ]]; then
        while read -r img; do
            [[ -n $img ]] || continue
            devs=$(loops_of "$img" | paste -sd, -)
            printf '  %-12s %s\n' "${img##*/}" "${devs:-not attached}"
        done < <(list_images)
    fi
    if [[ -f $LABENV ]]; then
        printf '  %s\n' "$(cat "$LABENV")"
    fi
}

case ${1:-} in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
