#!/bin/bash
# CelebA 128x128 on one node with 8 GPUs: `accelerate launch` with launch/accelerate_8gpu.yaml.
# Submit from the repository root (the job runs there):
#
#   sbatch slurm/celeba_8gpu.sh
#   BACKEND=deepspeed sbatch slurm/celeba_8gpu.sh         # DeepSpeed ZeRO-2 instead of DDP
#   sbatch -p gpu --time=2-00:00:00 slurm/celeba_8gpu.sh train.steps=200000   # args = overrides
#   RUN_DIR=runs/celeba-lr2e-4 OVERRIDES="optim.lr_g=2e-4 optim.lr_d=2e-4" sbatch slurm/celeba_8gpu.sh
#   DRY_RUN=1 bash slurm/celeba_8gpu.sh                 # print the launch command and exit
#   bash slurm/celeba_8gpu.sh --help                    # this text
#
# sbatch's own settings (partition, time, GPUs, account) are given on the sbatch command line
# or as SBATCH_* variables (SBATCH_PARTITION, SBATCH_TIMELIMIT, SBATCH_GRES, ...); they beat the
# #SBATCH lines below. Everything else comes from the environment of `sbatch` (all optional):
#   CONFIG       preset or YAML path (default celeba128)
#   SHARDS       shard set or image folder, sets data.shards (default: the preset's)
#   RUN_DIR      run directory (default runs/<preset name>); a rerun or requeue continues it
#   NPROC        training processes (default: GPUs Slurm gave the job, else 8)
#   MASTER_PORT  rendezvous port on this node (default: a free one)
#   OVERRIDES    extra section.field=value overrides, space-separated (script args work too)
#   BACKEND      ddp (default) or deepspeed: DeepSpeed ZeRO (train.backend=deepspeed)
#   DEEPSPEED_CONFIG  its DeepSpeed config (default launch/deepspeed_zero2.json: ZeRO-2)
#   MAX_RESTARTS relaunches after a crash inside one allocation, each resuming from the newest
#                checkpoint (default 3)
#   STOP_TIMEOUT seconds the workers get to checkpoint after the stop signal (default 120)
#   REQUEUE      1: requeue on the time-limit warning (default); 0: only checkpoint and stop
#   ACCELERATE_CONFIG (default launch/accelerate_8gpu.yaml), PYTHON (default python),
#   REPO_DIR     where to run (default: the directory sbatch was called from)
#
# Time limit and preemption: --signal=B:USR1@300 makes Slurm send SIGUSR1 to this script 5
# minutes before the limit. The script passes SIGUSR1 to the launcher, which passes it to every
# training process; they finish the generator step, write checkpoints/step-XXXXXXXX.pt, print
# "stop requested: saved ..." and exit. The script then requeues the job (scontrol requeue), and
# the requeued job resumes with --resume auto: same job id, same output file (--open-mode=append),
# the step count continues. By hand:
#   scancel --signal=USR1 --batch JOBID    checkpoint, requeue, continue
#   scancel --signal=USR2 --batch JOBID    checkpoint and end the job (no requeue)
#
#SBATCH --job-name=wgan-celeba128
#SBATCH --nodes=1
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
NPROC=${NPROC:-${SLURM_GPUS_ON_NODE:-8}}
ACCELERATE_CONFIG=${ACCELERATE_CONFIG:-launch/accelerate_8gpu.yaml}
MAX_RESTARTS=${MAX_RESTARTS:-3}
read -r -a overrides <<<"${OVERRIDES:-}"
# BACKEND=deepspeed: DeepSpeed ZeRO engines on the same launch (train.backend=deepspeed,
# docs/deepspeed.md), configured by DEEPSPEED_CONFIG.
case ${BACKEND:-ddp} in
    ddp) backend=() ;;
    deepspeed) backend=(train.backend=deepspeed
                        train.deepspeed_config="${DEEPSPEED_CONFIG:-launch/deepspeed_zero2.json}") ;;
    *) echo "error: BACKEND=$BACKEND: choose ddp or deepspeed" >&2; exit 2 ;;
esac

# torch.distributed.run (inside accelerate launch) reads its options from PET_* variables:
# pass SIGUSR1 on to the workers instead of dying of it, and wait for their checkpoint.
export PET_SIGNALS_TO_HANDLE=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1
export PET_SHUTDOWN_TIMEOUT=${STOP_TIMEOUT:-120}

cmd=("$PYTHON" -m accelerate.commands.launch --config_file "$ACCELERATE_CONFIG"
     --num_processes "$NPROC" --max_restarts 0
     ${MASTER_PORT:+--main_process_port "$MASTER_PORT"}
     -m wgan_dist.train --config "$CONFIG" --run-dir "$RUN_DIR" --resume auto
     "${backend[@]}" ${SHARDS:+data.shards="$SHARDS"} "${overrides[@]}" "$@")

if [[ ${DRY_RUN:-0} == 1 ]]; then
    printf '%q ' "${cmd[@]}"; echo
    exit 0
fi

echo "[$(date '+%F %T')] job ${SLURM_JOB_ID:-none} on $(hostname -s), start $((${SLURM_RESTART_COUNT:-0} + 1)), $NPROC processes, run dir $RUN_DIR"
echo "+ ${cmd[*]}"

# Checkpoint on the stop signals, requeue on the time-limit warning, relaunch after a crash.
source slurm/supervise.sh
supervise launcher
