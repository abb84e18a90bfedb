#!/usr/bin/env bash
# A two-node Slurm cluster on one machine, for CI and for trying slurm/multinode.sh by hand.
#
#   bash .ci/slurm_two_nodes.sh start    # install if missing, build the network, start, wait idle
#   bash .ci/slurm_two_nodes.sh status   # daemons, namespaces and sinfo; exit 1 when not usable
#   bash .ci/slurm_two_nodes.sh stop     # stop what start started, remove the network
#
#   SLURM_CONF=/tmp/wgan_slurm2/slurm.conf sbatch -N 2 slurm/multinode.sh ...
#
# Each node is a network namespace (wgn1, wgn2) with its own host name (a UTS namespace made
# by `unshare --uts` when its slurmd starts) and one end of a veth pair; the other ends hang on a
# bridge in the root namespace, which holds the controller's address:
#
#   root namespace: bridge wgnbr0 10.77.0.1/24 (slurmctld, munged) -- wgn1-h, wgn2-h
#   namespace wgn1: eth0 10.77.0.11/24, host name wgn1, slurmd -N wgn1
#   namespace wgn2: eth0 10.77.0.12/24, host name wgn2, slurmd -N wgn2
#
# There is no route out of the namespaces and the bridge has no uplink: nothing leaves the
# machine. wgn1 and wgn2 resolve inside the namespaces through /etc/netns/<ns>/hosts, which
# `ip netns exec` mounts over /etc/hosts for slurmd and everything it starts (the jobs); the
# root namespace's /etc/hosts is not touched. Jobs therefore see `hostname` = their node name,
# and MASTER_ADDR=wgn1 reaches wgn1's namespace from both nodes.
#
# Runs as root. Idempotent. Independent of the single-node cluster of .ci/slurm_cluster.sh (both
# may run at once): another cluster name, other ports (6827/6828 instead of 6817/6818), its
# slurm.conf in $SLURM2_CI_DIR (not /etc/slurm; clients need SLURM_CONF) and its own munged
# on its own socket (it reuses /etc/munge/munge.key, creating it if missing).
set -euo pipefail

DIR=${SLURM2_CI_DIR:-/tmp/wgan_slurm2}
CONF=$DIR/slurm.conf
NODES=(wgn1 wgn2)
NET=10.77.0
CTL_IP=$NET.1
BRIDGE=wgnbr0
PARTITION=debug
CTL_PORT=6827
SLURMD_PORT=6828
MUNGE=$DIR/munge
MUNGE_SOCKET=$MUNGE/munge.socket
MARK="# written by wgan_dist .ci/slurm_two_nodes.sh"
export SLURM_CONF=$CONF

log() { echo "slurm_two_nodes: $*"; }

node_ip() {  # wgn1 -> 10.77.0.11
    local i
    for i in "${!NODES[@]}"; do
        [[ ${NODES[$i]} == "$1" ]] && { echo "$NET.$((11 + i))"; return; }
    done
    return 1
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v sbatch >/dev/null && command -v munged >/dev/null \
        && command -v ip >/dev/null && command -v unshare >/dev/null; then
        return
    fi
    log "installing slurmctld slurmd slurm-client munge iproute2"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurmctld slurmd slurm-client munge iproute2 util-linux >/dev/null
}

# --- network ---------------------------------------------------------------------------------

network_up() {
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        log "creating bridge $BRIDGE ($CTL_IP/24)"
        ip link add "$BRIDGE" type bridge
    fi
    ip addr replace "$CTL_IP/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    local ns ip
    for ns in "${NODES[@]}"; do
        ip=$(node_ip "$ns")
        if ! ip netns list | grep -qw "^$ns"; then
            log "creating network namespace $ns ($ip)"
            ip netns add "$ns"
        fi
        if ! ip link show "$ns-h" >/dev/null 2>&1; then
            ip netns exec "$ns" ip link del eth0 2>/dev/null || true
            ip link add "$ns-h" type veth peer name eth0 netns "$ns"
        fi
        ip link set "$ns-h" master "$BRIDGE"
        ip link set "$ns-h" up
        ip netns exec "$ns" ip link set lo up
        ip netns exec "$ns" ip addr replace "$ip/24" dev eth0
        ip netns exec "$ns" ip link set eth0 up
        # The names, inside the namespace only: mounted over /etc/hosts for slurmd (and
        # `ip netns exec` does the same by hand). The controller's host name is the bridge's
        # address here: loopback in a node's namespace is that node's own.
        mkdir -p "/etc/netns/$ns"
        {
            echo "$MARK"
            echo "127.0.0.1 localhost"
            echo "::1 localhost ip6-localhost ip6-loopback"
            echo "$CTL_IP $(hostname -s)"
            local n
            for n in "${NODES[@]}"; do echo "$(node_ip "$n") $n"; done
        } >"/etc/netns/$ns/hosts"
    done
}

network_down() {
    local ns
    for ns in "${NODES[@]}"; do
        ip link del "$ns-h" 2>/dev/null || true
        if ip netns list | grep -qw "^$ns"; then
            log "removing network namespace $ns"
            ip netns del "$ns"
        fi
        if [[ -f /etc/netns/$ns/hosts ]] && grep -qF "$MARK" "/etc/netns/$ns/hosts"; then
            rm -f "/etc/netns/$ns/hosts"
            rmdir "/etc/netns/$ns" 2>/dev/null || true
        fi
    done
    rmdir /etc/netns 2>/dev/null || true
    if ip link show "$BRIDGE" >/dev/null 2>&1; then
        log "removing bridge $BRIDGE"
        ip link del "$BRIDGE"
    fi
}

# --- configuration ---------------------------------------------------------------------------

write_config() {
    mkdir -p "$DIR"/{state,spool,log,run}
    local cpus mem_mb n
    cpus=$(nproc)
    # Both nodes share this machine; each claims all of it (the jobs here are tiny).
    mem_mb=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024 ))
    local text
    text=$(cat <<EOF
$MARK
ClusterName=wganci2
SlurmctldHost=$(hostname -s)($CTL_IP)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# Our own munged; requeued jobs wait cred_expire seconds before they may start again (default 120).
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
CredType=cred/munge
SlurmctldPort=$CTL_PORT
SlurmdPort=$SLURMD_PORT
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
# No cgroups in containers: track processes by parent id, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
ReturnToService=2
MinJobAge=600
KillWait=30
SchedulerParameters=sched_interval=2
EOF
)
    for n in "${NODES[@]}"; do
        text+=$'\n'"NodeName=$n NodeAddr=$(node_ip "$n") CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN"
    done
    text+=$'\n'"PartitionName=$PARTITION Nodes=$(IFS=,; echo "${NODES[*]}") Default=YES MaxTime=INFINITE State=UP"
    if [[ ! -f $CONF ]] || [[ "$(cat "$CONF")" != "$text" ]]; then
        printf '%s\n' "$text" >"$CONF"
        return 0  # changed
    fi
    return 1  # unchanged
}

# --- daemons ---------------------------------------------------------------------------------

pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

munge_ok() { munge -S "$MUNGE_SOCKET" -n </dev/null 2>/dev/null | unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1; }

start_munge() {
    if [[ ! -s /etc/munge/munge.key ]]; then
        mkdir -p /etc/munge
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        chown -R munge:munge /etc/munge
        chmod 0700 /etc/munge
        chmod 0400 /etc/munge/munge.key
    fi
    munge_ok && return
    mkdir -p "$MUNGE"
    chown munge:munge "$MUNGE"
    chmod 0755 "$MUNGE"
    log "starting munged (socket $MUNGE_SOCKET)"
    runuser -u munge -- /usr/sbin/munged --force --socket="$MUNGE_SOCKET" \
        --pid-file="$MUNGE/munged.pid" --log-file="$MUNGE/munged.log" --seed-file="$MUNGE/munged.seed"
    for _ in $(seq 50); do
        munge_ok && return
        sleep 0.1
    done
    log "munged did not come up"; tail -n 20 "$MUNGE/munged.log" 2>/dev/null || true; return 1
}

start_daemons() {
    local changed=$1 n
    if [[ $changed == 1 ]]; then
        stop_slurm  # a new config needs fresh daemons
    fi
    if ! pid_alive "$DIR/run/slurmctld.pid"; then
        log "starting slurmctld ($CTL_IP:$CTL_PORT)"
        /usr/sbin/slurmctld -f "$CONF"
    fi
    for n in "${NODES[@]}"; do
        if ! pid_alive "$DIR/run/slurmd-$n.pid"; then
            log "starting slurmd $n in namespace $n ($(node_ip "$n"):$SLURMD_PORT)"
            mkdir -p "$DIR/spool/$n"
            # Enter the node's network namespace, with its own UTS namespace (the node and its
            # jobs see `hostname` = the node name) and mount namespace (its hosts file over
            # /etc/hosts, as `ip netns exec` would do; /sys stays as it is: `ip netns exec`
            # would mount a fresh one without the cgroup filesystems slurmd insists on).
            nsenter --net="/run/netns/$n" -- unshare --uts --mount --propagation slave /bin/sh -c \
                'hostname "$1" && mount --bind "/etc/netns/$1/hosts" /etc/hosts &&
                 exec /usr/sbin/slurmd -f "$2" -N "$1"' _ "$n" "$CONF"
        fi
    done
}

node_states() { sinfo -h -N -o '%N %T' 2>/dev/null; }

wait_idle() {
    local states="" n state ready
    for _ in $(seq 120); do
        states=$(node_states)
        ready=1
        for n in "${NODES[@]}"; do
            state=$(awk -v n="$n" '$1 == n {print $2}' <<<"$states")
            case $state in
                idle|mixed|allocated|completing) ;;
                down*|drain*|fail*)
                    scontrol update NodeName="$n" State=RESUME >/dev/null 2>&1 || true; ready=0 ;;
                *) ready=0 ;;
            esac
        done
        if (( ready )); then log "nodes up:" $states; return 0; fi
        sleep 0.5
    done
    log "nodes did not become idle (${states:-no answer}); logs in $DIR/log"
    tail -n 20 "$DIR"/log/*.log 2>/dev/null || true
    return 1
}

stop_pid() {  # $1: pid file, $2: name
    local pid
    if pid_alive "$1"; then
        pid=$(cat "$1")
        log "stopping $2 ($pid)"
        kill "$pid"
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
        log "$2 ($pid) still running after 10 s: SIGKILL"
        kill -9 "$pid" 2>/dev/null || true
    fi
}

stop_slurm() {
    local n
    for n in "${NODES[@]}"; do stop_pid "$DIR/run/slurmd-$n.pid" "slurmd $n"; done
    stop_pid "$DIR/run/slurmctld.pid" slurmctld
}

stop_namespace_processes() {
    # What is left inside a node after its slurmd stopped (a step's slurmstepd, a job's
    # processes) was started by this cluster: end it, or the namespace could not go.
    local n pids
    for n in "${NODES[@]}"; do
        ip netns list | grep -qw "^$n" || continue
        pids=$(ip netns pids "$n" 2>/dev/null | tr '\n' ' ')
        [[ -n ${pids// } ]] || continue
        log "ending processes left in namespace $n: $pids"
        kill $pids 2>/dev/null || true
        for _ in $(seq 50); do
            [[ -z $(ip netns pids "$n" 2>/dev/null) ]] && break
            sleep 0.1
        done
        pids=$(ip netns pids "$n" 2>/dev/null | tr '\n' ' ')
        [[ -n ${pids// } ]] && kill -9 $pids 2>/dev/null || true
    done
}

status() {
    local ok=0 f n
    if pid_alive "$DIR/run/slurmctld.pid"; then echo "slurmctld: running (pid $(cat "$DIR/run/slurmctld.pid"))"
    else echo "slurmctld: not running"; ok=1; fi
    for n in "${NODES[@]}"; do
        f=$DIR/run/slurmd-$n.pid
        if pid_alive "$f"; then echo "slurmd $n: running (pid $(cat "$f")) in namespace $n, $(node_ip "$n")"
        else echo "slurmd $n: not running"; ok=1; fi
    done
    if pid_alive "$MUNGE/munged.pid"; then echo "munged: running (pid $(cat "$MUNGE/munged.pid"))"
    else echo "munged: not running"; ok=1; fi
    if [[ -f $CONF ]] && command -v sinfo >/dev/null && sinfo >/dev/null 2>&1; then
        sinfo
        for n in "${NODES[@]}"; do
            [[ $(node_states | awk -v n="$n" '$1 == n {print $2}') =~ ^(idle|mixed|allocated|completing)$ ]] || ok=1
        done
    else
        echo "sinfo: no answer"; ok=1
    fi
    echo "SLURM_CONF=$CONF"
    return $ok
}

case ${1:-} in
    start)
        [[ $(id -u) == 0 ]] || { log "must run as root"; exit 1; }
        install_packages
        network_up
        changed=0
        write_config && changed=1
        start_munge
        start_daemons "$changed"
        wait_idle
        log "ready: SLURM_CONF=$CONF sbatch -N 2 ..."
        ;;
    stop)
        [[ $(id -u) == 0 ]] || { log "must run as root"; exit 1; }
        stop_slurm
        stop_namespace_processes
        stop_pid "$MUNGE/munged.pid" munged
        network_down
        ;;
    status)
        status
        ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2
        ;;
esac
