#!/usr/bin/env bash
# Train with torchrun instead of `accelerate launch`. Arguments go to `python -m wgan_dist.train`,
# which always gets `--resume auto`: a restarted worker group (or a rerun of this command)
# continues from the newest checkpoint of the run dir, a fresh run dir starts from scratch.
#
#   bash launch/torchrun.sh --config celeba128                       # all GPUs of this machine
#   NPROC=2 bash launch/torchrun.sh model.g_width=8 train.steps=50    # 2 processes (CPU works)
#   # two nodes, 8 GPUs each: run on both; the rendezvous is hosted on node0
#   NNODES=2 MASTER_ADDR=node0 bash launch/torchrun.sh --config celeba128
#   BACKEND=deepspeed bash launch/torchrun.sh --config celeba128      # DeepSpeed ZeRO-2, not DDP
#   DRY_RUN=1 bash launch/torchrun.sh --config celeba128              # print the command only
#   bash launch/torchrun.sh --help        # this text (the trainer's: python -m wgan_dist.train --help)
#
# Environment (all optional):
#   NPROC         processes on this node (default: number of GPUs, 1 without GPUs)
#   NNODES        nodes (default 1)
#   MASTER_ADDR   host of the rendezvous, one of the nodes (default 127.0.0.1)
#   MASTER_PORT   its port (default 29500); with one node and no MASTER_PORT a free port is used
#   RDZV_BACKEND  c10d (default) or static; static needs NODE_RANK (0 .. NNODES-1) on each node
#   RDZV_ID       c10d rendezvous id, the same on all nodes of one run (default wgan_dist)
#   MAX_RESTARTS  times torchrun restarts the whole worker group after a worker fails (default 3);
#                 the restarted workers resume from the newest checkpoint
#   STOP_TIMEOUT  seconds torchrun waits for workers to checkpoint and exit after a stop signal
#                 before it kills them (default 120)
#   BACKEND       ddp (default) or deepspeed: DeepSpeed ZeRO engines (train.backend=deepspeed)
#   DEEPSPEED_CONFIG  their DeepSpeed config (default launch/deepspeed_zero2.json: ZeRO-2)
#   PYTHON        the interpreter (default: python)
#
# Stopping: Ctrl-C, or SIGTERM, SIGINT or SIGUSR1 to this script, is passed to torchrun and by it
# to every worker, which finishes its generator step, writes a checkpoint and exits 75; this
# script then exits 75 too (torchrun itself would say 1; launch/relay.sh, docs/faults.md).
set -euo pipefail

# --help / -h: the comment block above, without running anything.
for arg in "$@"; do
    if [[ $arg == --help || $arg == -h ]]; then
        awk 'NR == 1 {next} /^#SBATCH/ || !/^#/ {exit} {sub(/^# ?/, "")}
             /^$/ {blank++; next} {while (blank) {print ""; blank--}; print}' "${BASH_SOURCE[0]}"
        exit 0
    fi
done

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python}
if [[ -z ${NPROC:-} ]]; then
    NPROC=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
    (( NPROC > 0 )) || NPROC=1
fi
NNODES=${NNODES:-1}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
RDZV_BACKEND=${RDZV_BACKEND:-c10d}
MAX_RESTARTS=${MAX_RESTARTS:-3}
STOP_TIMEOUT=${STOP_TIMEOUT:-120}

if [[ $NNODES == 1 && -z ${MASTER_PORT:-} && $RDZV_BACKEND == c10d ]]; then
    rendezvous=(--standalone)  # a free local port: two runs on one machine do not collide
elif [[ $RDZV_BACKEND == c10d ]]; then
    rendezvous=(--nnodes="$NNODES" --rdzv-backend=c10d
                --rdzv-endpoint="$MASTER_ADDR:${MASTER_PORT:-29500}" --rdzv-id="${RDZV_ID:-wgan_dist}")
else
    rendezvous=(--nnodes="$NNODES" --node-rank="${NODE_RANK:-0}"
                --master-addr="$MASTER_ADDR" --master-port="${MASTER_PORT:-29500}")
fi
# A restarted worker group must not share the rendezvous store of the group it replaces: with
# torch 2.14 it can read the dead group's addresses and fail to connect (pytorch#135712). This
# gives each round its own store (c10d only; static rendezvous always shares it).
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}

case ${BACKEND:-ddp} in
    ddp) backend=() ;;
    deepspeed) backend=(train.backend=deepspeed
                        train.deepspeed_config="${DEEPSPEED_CONFIG:-$REPO/launch/deepspeed_zero2.json}") ;;
    *) echo "error: BACKEND=$BACKEND: choose ddp or deepspeed" >&2; exit 2 ;;
esac

cmd=("$PYTHON" -m torch.distributed.run "${rendezvous[@]}"
     --nproc-per-node="$NPROC" --max-restarts="$MAX_RESTARTS"
     # torchrun handles TERM/INT/HUP/QUIT by default; USR1 is the Slurm-style "checkpoint now".
     --signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1
     --shutdown-timeout="$STOP_TIMEOUT"
     -m wgan_dist.train --resume auto "${backend[@]}" "$@")

if [[ ${DRY_RUN:-0} == 1 ]]; then
    printf '%q ' "${cmd[@]}"; echo
    exit 0
fi
# The package is used from this checkout; relative paths stay relative to where you are.
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
# shellcheck source=launch/relay.sh
source "$REPO/launch/relay.sh"
relay "$NPROC"  # torchrun exits 1 after a signal; this exits 75 when every worker checkpointed
