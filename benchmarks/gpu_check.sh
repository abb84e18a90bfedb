#!/usr/bin/env bash
# One-shot GPU check (benchmarks/gpu_check.py): exact-resume runs of the CLI, throughput of the
# critic step and of a whole G step for every fast path, 2-process gradient communication.
#
#   bash benchmarks/gpu_check.sh                  # one GPU: under 8 minutes
#   bash benchmarks/gpu_check.sh --cpu-smoke      # toy sizes on the CPU in seconds (CI runs this)
#   bash benchmarks/gpu_check.sh --out DIR        # where gpu_check.json / gpu_check.md go
#   bash benchmarks/gpu_check.sh --help           # the options and what is measured
#
# Environment: PYTHON, the interpreter (default: python, else python3).
# Exit status: 0 all good, 1 a run failed, a loss was non-finite or a resume was not exact.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-$(command -v python || command -v python3)}
exec "$PYTHON" benchmarks/gpu_check.py "$@"
