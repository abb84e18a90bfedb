# Sourced by launch/torchrun.sh and launch/deepspeed.sh (not a script of its own): run
# "${cmd[@]}" (a launcher) and exit with the training processes' own code where the launcher
# would report another.
#
#   relay NPROC      NPROC: training processes the launcher starts on this machine
#
# Why: after a stop signal torchrun exits 1 (its SignalException) and `accelerate launch` 130,
# even when every training process wrote its checkpoint and exited 75. Each training process
# leaves its exit code in $WGAN_DIST_EXIT_DIR/rank-N (wgan_dist/exits.py); when all NPROC of
# them say 75, this exits 75 ("stopped with a checkpoint: resume"). A process ended without a
# checkpoint leaves no code, and the launcher's own code stands.
#
# Signals: the launcher runs in its own process group; SIGINT, SIGTERM, SIGHUP and SIGUSR1 to
# this script (a Ctrl-C in the terminal included) are passed to that whole group, as a
# terminal would: the launcher and everything it started (the deepspeed runner only waits on
# its children; they must hear it themselves). The trainer takes the launcher's copy that
# follows as the same request (training/signals.py). Multi-node runs (a DeepSpeed HOSTFILE,
# NNODES > 1): each node's script sees only its own processes' codes.

relay() {
    local nproc=$1 pid rc sig codes
    WGAN_DIST_EXIT_DIR=$(mktemp -d "${TMPDIR:-/tmp}/wgan_dist-exit.XXXXXX")
    export WGAN_DIST_EXIT_DIR
    # If this script is killed outright (SIGKILL to its process group: a test harness, a
    # supervisor), the launcher in its own group would run on: it gets SIGTERM instead, the
    # ordinary stop (util-linux setpriv; without it, that case is not covered).
    local guard=()
    if setpriv --pdeathsig TERM true 2>/dev/null; then
        guard=(setpriv --pdeathsig TERM)
    fi
    set -m  # job control: the launcher and its children get their own process group
    "${guard[@]}" "${cmd[@]}" &
    pid=$!
    set +m
    for sig in INT TERM HUP USR1; do
        # shellcheck disable=SC2064  # $pid is fixed now
        trap "kill -$sig -- -$pid 2>/dev/null || true" "$sig"
    done
    while :; do
        rc=0
        wait "$pid" || rc=$?
        kill -0 "$pid" 2>/dev/null || break  # a trap cut the wait short: keep waiting
    done
    # The deepspeed runner can exit before the processes it started: wait for the group
    # (at most 60 s), so that their exit codes are in and nothing is left running.
    for _ in $(seq 300); do
        kill -0 -- "-$pid" 2>/dev/null || break
        sleep 0.2
    done
    codes=$(cat "$WGAN_DIST_EXIT_DIR"/rank-* 2>/dev/null | sort -u | tr '\n' ' ')
    if [[ $rc != 0 && $codes == "75 " ]] &&
            (( $(find "$WGAN_DIST_EXIT_DIR" -name 'rank-*' | wc -l) == nproc )); then
        echo "every training process stopped with a checkpoint (launcher exit $rc): exit 75, resume with the same command" >&2
        rc=75
    fi
    rm -rf "$WGAN_DIST_EXIT_DIR"
    exit "$rc"
}
