#!/usr/bin/env bash
# A single-node Slurm cluster on loopback, for CI and for trying the slurm/ scripts by hand.
#
#   bash .ci/slurm_cluster.sh start    # install if missing, configure, start, wait until idle
#   bash .ci/slurm_cluster.sh status   # daemons and sinfo; exit 1 when the cluster is not usable
#   bash .ci/slurm_cluster.sh stop     # stop slurmd, slurmctld and munged (munged only if started here)
#
# A two-node cluster (network namespaces, its own ports, munged and SLURM_CONF) for
# slurm/multinode.sh: .ci/slurm_two_nodes.sh. Both may run at once.
#
# Runs as root. Idempotent: `start` on a running, idle cluster only reports it. Everything but
# /etc/slurm/slurm.conf (which every Slurm client reads) and /etc/munge/munge.key lives in
# $SLURM_CI_DIR. The recipe is the one in shared/FIELD-NOTES.md ("Slurm, for real, on one machine").
set -euo pipefail

DIR=${SLURM_CI_DIR:-/tmp/wgan_slurm}
CONF=/etc/slurm/slurm.conf
NODE=$(hostname -s)
PARTITION=debug
MARK="# written by wgan_dist .ci/slurm_cluster.sh"

log() { echo "slurm_cluster: $*"; }

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v sbatch >/dev/null && command -v munged >/dev/null; then
        return
    fi
    log "installing slurmctld slurmd slurm-client munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
}

write_config() {
    mkdir -p "$DIR"/{state,spool,log,run} /etc/slurm
    local cpus mem_mb
    cpus=$(nproc)
    # Leave 1 GiB to the system; jobs that ask for --mem=0 get the rest.
    mem_mb=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024 ))
    local text
    text=$(cat <<EOF
$MARK
ClusterName=wganci
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# Requeued jobs wait cred_expire seconds before they may start again (default 120).
AuthInfo=cred_expire=10
CredType=cred/munge
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
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
# Keep finished jobs visible to scontrol for a while (tests read their state).
MinJobAge=600
KillWait=30
SchedulerParameters=sched_interval=2
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
)
    if [[ -f $CONF ]] && ! grep -qF "$MARK" "$CONF"; then
        # A real cluster's configuration: never touch it.
        log "$CONF exists and was not written by this script; refusing to replace it"
        exit 1
    fi
    if [[ ! -f $CONF ]] || [[ "$(cat "$CONF")" != "$text" ]]; then
        printf '%s\n' "$text" >"$CONF"
        return 0  # changed
    fi
    return 1  # unchanged
}

pid_alive() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_munge() {
    mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
    chmod 0700 /etc/munge
    chmod 0400 /etc/munge/munge.key
    chmod 0755 /run/munge
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        return
    fi
    log "starting munged"
    # --force: a stale socket from a killed munged would stop it otherwise.
    runuser -u munge -- /usr/sbin/munged --force
    touch "$DIR/run/munged.started"  # stop ends only a munged that this script started
    for _ in $(seq 50); do
        munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 && return
        sleep 0.1
    done
    log "munged did not come up"; return 1
}

start_daemons() {
    local changed=$1
    if [[ $changed == 1 ]]; then
        stop_slurm  # a new config needs fresh daemons
    fi
    if ! pid_alive "$DIR/run/slurmctld.pid"; then
        log "starting slurmctld"
        /usr/sbin/slurmctld -f "$CONF"
    fi
    if ! pid_alive "$DIR/run/slurmd.pid"; then
        log "starting slurmd"
        /usr/sbin/slurmd -f "$CONF"
    fi
}

node_state() { sinfo -h -n "$NODE" -o '%T' 2>/dev/null | head -n1; }

wait_idle() {
    local state=""
    for _ in $(seq 120); do
        state=$(node_state)
        case $state in
            idle|mixed|allocated|completing) log "node $NODE is $state"; return 0 ;;
            down*|drain*|fail*)
                # A node that went down while its daemons were stopped comes back here.
                scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        sleep 0.5
    done
    log "node $NODE did not become idle (state '${state:-unknown}'); logs in $DIR/log"
    tail -n 20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" 2>/dev/null || true
    return 1
}

stop_slurm() {
    local f pid
    for f in slurmd slurmctld; do
        if pid_alive "$DIR/run/$f.pid"; then
            pid=$(cat "$DIR/run/$f.pid")
            log "stopping $f ($pid)"
            kill "$pid"
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
    done
}

stop_munge() {
    local pidfile=/run/munge/munged.pid pid
    if pid_alive "$pidfile" && [[ -f $DIR/run/munged.started ]]; then
        pid=$(cat "$pidfile")
        log "stopping munged ($pid)"
        kill "$pid"
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$DIR/run/munged.started"
}

status() {
    local ok=0 f
    for f in slurmctld slurmd; do
        if pid_alive "$DIR/run/$f.pid"; then echo "$f: running (pid $(cat "$DIR/run/$f.pid"))"
        else echo "$f: not running"; ok=1; fi
    done
    if pid_alive /run/munge/munged.pid; then echo "munged: running (pid $(cat /run/munge/munged.pid))"
    else echo "munged: not running"; ok=1; fi
    if command -v sinfo >/dev/null && sinfo >/dev/null 2>&1; then
        sinfo
        [[ $(node_state) =~ ^(idle|mixed|allocated|completing)$ ]] || ok=1
    else
        echo "sinfo: no answer"; ok=1
    fi
    return $ok
}

case ${1:-} in
    start)
        [[ $(id -u) == 0 ]] || { log "must run as root"; exit 1; }
        install_packages
        changed=0
        write_config && changed=1
        start_munge
        start_daemons "$changed"
        wait_idle
        ;;
    stop)
        stop_slurm
        stop_munge
        ;;
    status)
        status
        ;;
    *)
        echo "usage: $0 start|stop|status" >&2
        exit 2
        ;;
esac
