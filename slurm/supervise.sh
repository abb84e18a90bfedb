# Sourced by slurm/celeba_8gpu.sh and slurm/multinode.sh (not a job script of its own):
# run "${cmd[@]}" under the job's signal, relaunch and requeue policy.
#
#   supervise NAME     NAME: what the command is, for the log ("launcher", "srun")
#
# Reads: cmd (array), RUN_DIR, MAX_RESTARTS, REQUEUE (default 1), SLURM_JOB_ID.
# - SIGUSR1 (the time-limit warning, --signal=B:USR1@300): pass SIGUSR1 to the command, whose
#   training processes checkpoint and exit; then `scontrol requeue` the job, which resumes.
# - SIGUSR2 / SIGTERM: the same checkpoint, then end the job without requeueing.
# - The command fails on its own (a crash): relaunch it, up to MAX_RESTARTS times, each time a
#   fresh launcher with a fresh rendezvous store, resuming from the newest checkpoint. The
#   launchers' own restarts stay 0: torch 2.14 restarts reuse the rendezvous store, and the
#   restarted group can read the dead group's addresses (pytorch#135712).
# - The command exits 75 (the trainer's "stopped by a signal after a checkpoint", e.g. Slurm
#   signalled the training processes themselves): treated like SIGUSR1, requeue.
# Exits the script: 0 after a stop on request, else the command's exit status.

supervise() {
    local name=$1
    # The command runs in the background so that a trap can fire while we wait for it.
    stop="" launcher=""
    on_signal() {  # $1: what to do afterwards (requeue | end), $2: the signal's name
        stop=$1; interrupted=1
        echo "[$(date '+%F %T')] $2: asking the training processes to checkpoint and stop"
        kill -USR1 "$launcher" 2>/dev/null || true
    }
    trap 'on_signal requeue USR1' USR1
    trap 'on_signal end USR2' USR2
    trap 'on_signal end TERM' TERM

    local attempt=0 rc=0
    while :; do
        "${cmd[@]}" &
        launcher=$!
        while :; do
            interrupted=0 rc=0
            wait "$launcher" || rc=$?
            (( interrupted )) || break  # otherwise a trap cut the wait short: keep waiting
        done
        # 75: the training processes were signalled directly, checkpointed and stopped.
        [[ $rc == 75 && -z $stop ]] && stop=requeue
        [[ $rc == 0 || -n $stop ]] && break
        (( attempt < MAX_RESTARTS )) || break
        attempt=$((attempt + 1))
        echo "[$(date '+%F %T')] $name failed (exit $rc): relaunch $attempt of $MAX_RESTARTS, resuming from the newest checkpoint"
    done

    if [[ $stop == requeue && ${REQUEUE:-1} == 1 && -n ${SLURM_JOB_ID:-} ]]; then
        echo "[$(date '+%F %T')] $name exited ($rc); requeueing job $SLURM_JOB_ID, it resumes from the newest checkpoint in $RUN_DIR"
        scontrol requeue "$SLURM_JOB_ID"
        exit 0
    fi
    if [[ -n $stop ]]; then
        echo "[$(date '+%F %T')] stopped on request ($name exit $rc)"
        exit 0
    fi
    exit "$rc"
}
