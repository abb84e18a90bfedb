#!/usr/bin/env bash
# Train with DeepSpeed's own launcher (`deepspeed`) and DeepSpeed ZeRO engines
# (train.backend=deepspeed, docs/deepspeed.md). Arguments go to `python -m wgan_dist.train`,
# which gets `--resume auto`: a rerun of this command continues the run dir's newest checkpoint.
#
#   bash launch/deepspeed.sh --config celeba128                     # all GPUs of this machine
#   NPROC=2 bash launch/deepspeed.sh model.g_width=8 train.steps=50  # 2 processes (CPU works)
#   HOSTFILE=hosts bash launch/deepspeed.sh --config celeba128       # nodes of a hostfile (ssh/pdsh)
#   DEEPSPEED_CONFIG=my_zero1.json bash launch/deepspeed.sh ...      # another DeepSpeed config
#   DRY_RUN=1 bash launch/deepspeed.sh --config celeba128            # print the command only
#   bash launch/deepspeed.sh --help                                  # this text
#
# Environment (all optional):
#   NPROC             processes on this machine (default: number of GPUs, 1 without GPUs)
#   HOSTFILE          a DeepSpeed hostfile ("host slots=N" lines): NPROC is then ignored
#   DEEPSPEED_CONFIG  the engines' DeepSpeed config (default launch/deepspeed_zero2.json: ZeRO-2,
#                     fp32; bf16.enabled there, or train.mixed_precision=bf16, for bf16)
#   MASTER_PORT       the rendezvous port (default 29500)
#   PYTHON            the interpreter whose `deepspeed` launcher runs (default: python)
#
# Stopping: Ctrl-C or SIGTERM/SIGUSR1 to this script checkpoints every process and exits 75
# (on one machine; see launch/relay.sh).
#
# The same run under torchrun: BACKEND=deepspeed bash launch/torchrun.sh ...; under accelerate:
# accelerate launch --config_file launch/accelerate_deepspeed_8gpu.yaml -m wgan_dist.train ...
set -euo pipefail

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
if [[ -n ${HOSTFILE:-} ]]; then
    where=(--hostfile "$HOSTFILE")
else
    where=(--num_gpus "$NPROC")
fi

cmd=("$PYTHON" -m deepspeed.launcher.runner "${where[@]}" --master_port "${MASTER_PORT:-29500}"
     --module wgan_dist.train --resume auto train.backend=deepspeed
     train.deepspeed_config="${DEEPSPEED_CONFIG:-$REPO/launch/deepspeed_zero2.json}" "$@")

if [[ ${DRY_RUN:-0} == 1 ]]; then
    printf '%q ' "${cmd[@]}"; echo
    exit 0
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
# shellcheck source=launch/relay.sh
source "$REPO/launch/relay.sh"
# Exit 75 when every process stopped with a checkpoint (the launcher would say otherwise);
# with a HOSTFILE the processes are elsewhere and the launcher's own code stands.
relay "$([[ -n ${HOSTFILE:-} ]] && echo 0 || echo "$NPROC")"
