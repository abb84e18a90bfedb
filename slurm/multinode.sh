#!/bin/bash
# N nodes x G GPUs: one `srun` task per node runs torchrun, which starts G training processes;
# the nodes meet through a c10d rendezvous on the first node of the allocation.
# Submit from the repository root (the job runs there):
#
#   sbatch -N 4 slurm/multinode.sh                                     # 4 x 8 GPUs, celeba128
#   BACKEND=deepspeed sbatch -N 4 slurm/multinode.sh                   # DeepSpeed ZeRO-2
#   sbatch -N 2 -p gpu slurm/multinode.sh train.steps=200000          # args = overrides
#   CONFIG=celeba128 RUN_DIR=runs/celeba-32gpu sbatch -N 4 slurm/multinode.sh
#   LAUNCHER=accelerate sbatch -N 2 slurm/multinode.sh                 # accelerate launch instead
#   DRY_RUN=1 bash slurm/multinode.sh                                 # print the command and exit
#   bash slurm/multinode.sh --help                                    # this text
#
# sbatch's own settings (nodes, partition, time, GPUs, account) are given on the sbatch command
# line or as SBATCH_* variables (SBATCH_PARTITION, SBATCH_TIMELIMIT, SBATCH_GRES, ...); they beat
# the #SBATCH lines below. Everything else comes from the environment of `sbatch` (all optional):
#   CONFIG        preset or YAML path (default celeba128)
#   SHARDS        shard set or image folder, sets data.shards (default: the preset's)
#   RUN_DIR       run directory (default runs/<preset name>); a rerun or requeue continues it
#   GPUS_PER_NODE training processes per node (default: GPUs Slurm gave a node, else 8)
#   MASTER_ADDR   rendezvous host (default: first node of the job)
#   MASTER_PORT   rendezvous port (default 29500 + job id % 1000)
#   OVERRIDES     extra section.field=value overrides, space-separated (script args work too)
#   BACKEND       ddp (default) or deepspeed: DeepSpeed ZeRO (train.backend=deepspeed)
#   DEEPSPEED_CONFIG  its DeepSpeed config (default launch/deepspeed_zero2.json: ZeRO-2)
#   LAUNCHER      torchrun (default) or accelerate (launch/accelerate_multinode.yaml)
#   MAX_RESTARTS  relaunches after a crash inside one allocation, each resuming from the newest
#                 checkpoint (default 3)
#   STOP_TIMEOUT  seconds the workers get to checkpoint after the stop signal (default 120)
#   REQUEUE       1: requeue on the time-limit warning (default); 0: only checkpoint and stop
#   PYTHON (default python), REPO_DIR (default: the directory sbatch was called from)
#
# Time limit and preemption: as in slurm/celeba_8gpu.sh. SIGUSR1 reaches this script 5 minutes
# before the limit; it is passed through srun to the launchers on every node, which pass it to
# every training process; they write one checkpoint and exit; the job requeues itself and the
# next start resumes (--resume auto). By hand: `scancel --signal=USR1 --batch JOBID` (requeue)
# or `scancel --signal=USR2 --batch JOBID` (checkpoint and end).
#
#SBATCH --job-name=wgan-multinode
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gres=gpu:8
#SBATCH --exclusive
#SBATCH --mem=0
#SBATCH --time=24:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=%x-%j.out
set -euo pipefail

# --help / -h: the comment block above, without running anything.
for arg in "$@"; do
    if [[ $arg == --help || $arg == -h ]]; then
        awk 'NR == 1 {next} /^#SBATCH/ || !/^#/ {exit} {sub(/^# ?/, "")}
             /^$/ {blank++; next} {while (blank) {print ""; blank--}; print}' "${BASH_SOURCE[0]}"
        exit 0
    fi
done

cd "${REPO_DIR:-${SLURM_SUBMIT_DIR:-$PWD}}"
PYTHON=${PYTHON:-python}
CONFIG=${CONFIG:-celeba128}
NAME=$(basename "$CONFIG" .yaml)
RUN_DIR=${RUN_DIR:-runs/$NAME}
NNODES=${SLURM_NNODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-8}}
if [[ -z ${MASTER_ADDR:-} ]]; then
    if [[ -n ${SLURM_JOB_NODELIST:-} ]]; then
        MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
    else
        MASTER_ADDR=$(hostname -s)
    fi
fi
MASTER_PORT=${MASTER_PORT:-$((29500 + ${SLURM_JOB_ID:-0} % 1000))}
MAX_RESTARTS=${MAX_RESTARTS:-3}
STOP_TIMEOUT=${STOP_TIMEOUT:-120}
LAUNCHER=${LAUNCHER:-torchrun}
read -r -a overrides <<<"${OVERRIDES:-}"
# BACKEND=deepspeed: DeepSpeed ZeRO engines on the same launch (train.backend=deepspeed,
# docs/deepspeed.md), configured by DEEPSPEED_CONFIG.
case ${BACKEND:-ddp} in
    ddp) backend=() ;;
    deepspeed) backend=(train.backend=deepspeed
                        train.deepspeed_config="${DEEPSPEED_CONFIG:-launch/deepspeed_zero2.json}") ;;
    *) echo "error: BACKEND=$BACKEND: choose ddp or deepspeed" >&2; exit 2 ;;
esac
train=(-m wgan_dist.train --config "$CONFIG" --run-dir "$RUN_DIR" --resume auto
       "${backend[@]}" ${SHARDS:+data.shards="$SHARDS"} "${overrides[@]}" "$@")

# torch.distributed.run reads its options from PET_* variables too (accelerate launch uses it).
# SIGUSR1 is not among the signals it passes on here: srun delivers SIGUSR1 to every process of
# the step, the training processes included, and a second stop signal (the launcher's copy)
# makes them stop at once, without a checkpoint. The launchers ignore it instead (`trap ''`
# below: an ignored signal stays ignored across exec; the trainer installs its own handler).
export PET_SIGNALS_TO_HANDLE=SIGTERM,SIGINT,SIGHUP,SIGQUIT
export PET_SHUTDOWN_TIMEOUT=$STOP_TIMEOUT

# One task per node with all of the node's CPUs (a step gets one CPU per task unless asked;
# torchrun, its GPU processes and their loader workers all live in that one task).
step=(srun --nodes="$NNODES" --ntasks-per-node=1 --cpus-per-task="${SLURM_CPUS_ON_NODE:-1}"
      --kill-on-bad-exit=1)
case $LAUNCHER in
    torchrun)
        cmd=("${step[@]}" bash -c 'trap "" USR1; exec "$@"' _ "$PYTHON" -m torch.distributed.run
             --nnodes="$NNODES" --nproc-per-node="$GPUS_PER_NODE"
             --rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:$MASTER_PORT"
             --rdzv-id="${SLURM_JOB_ID:-0}" --max-restarts=0
             "${train[@]}") ;;
    accelerate)
        # The node rank differs per task: each task reads its own SLURM_NODEID.
        cmd=("${step[@]}" bash -c 'trap "" USR1; py=$1; shift; exec "$py" -m accelerate.commands.launch --machine_rank "$SLURM_NODEID" "$@"'
             _ "$PYTHON" --config_file launch/accelerate_multinode.yaml
             --num_machines "$NNODES" --num_processes "$((NNODES * GPUS_PER_NODE))"
             --main_process_ip "$MASTER_ADDR" --main_process_port "$MASTER_PORT"
             --max_restarts 0 "${train[@]}") ;;
    *)
        echo "LAUNCHER=$LAUNCHER: choose torchrun or accelerate" >&2; exit 2 ;;
esac

if [[ ${DRY_RUN:-0} == 1 ]]; then
    printf '%q ' "${cmd[@]}"; echo
    exit 0
fi
echo "[$(date '+%F %T')] job ${SLURM_JOB_ID:-none}, start $((${SLURM_RESTART_COUNT:-0} + 1)): $NNODES node(s) x $GPUS_PER_NODE processes, rendezvous $MASTER_ADDR:$MASTER_PORT, run dir $RUN_DIR"
echo "+ ${cmd[*]}"

# srun passes SIGUSR1 to its tasks on every node (Slurm signals every process of a step: the
# launchers ignore it, the training processes checkpoint, their loader workers ignore it).
# Checkpoint on the stop signals, requeue on the time-limit warning, relaunch after a crash.
source slurm/supervise.sh
supervise srun
