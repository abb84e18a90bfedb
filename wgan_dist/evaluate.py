"""Quality of a checkpoint's generator against real shards.

    python -m wgan_dist.evaluate --checkpoint runs/default --data shards/builtin-28px-c1 --num 5000
    python -m wgan_dist.evaluate --checkpoint RUN --data SHARDS --fid --inception-weights PATH
    python -m wgan_dist.evaluate --checkpoint RUN --data SHARDS --classifier   # labelled data

Prints one JSON object (SWD per level and average x1e3, diversity ratios; FID/KID with
--fid; domain-classifier accuracy / classes covered / reverse KL / classifier-FID with
--classifier; accuracy on the requested classes for a conditional checkpoint) and writes it to --out if given.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from . import exits
from .exits import HelpFormatter


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="python -m wgan_dist.evaluate", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint file or run dir (newest)")
    p.add_argument("--data", default=None,
                   help="real shard dir (default: the checkpoint's data.shards)")
    p.add_argument("--num", type=int, default=5000, help="generated and real images")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated samples and the metrics")
    p.add_argument("--no-ema", action="store_true", help="score the raw generator, not its EMA")
    p.add_argument("--fid", action="store_true", help="FID/KID on Inception-v3 features")
    p.add_argument("--inception-weights", default=None,
                   help="local FID Inception weights (else $WGAN_DIST_INCEPTION_WEIGHTS)")
    p.add_argument("--classifier", action="store_true",
                   help="domain-classifier metrics (labelled shards; trained once and cached)")
    p.add_argument("--classifier-steps", type=int, default=2000,
                   help="training steps of the domain classifier (cached per shard set)")
    p.add_argument("--out", default=None, help="write the JSON here too")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where generator and metrics run")
    p.add_argument("--debug", action="store_true", help="print the traceback of an error too")
    return p


def _check_args(args: argparse.Namespace) -> None:
    """What would fail only after everything was computed, refused before anything is."""
    if args.num < 2:
        raise ValueError(f"--num {args.num}: must be >= 2 (the metrics compare pairs of images)")
    if args.classifier_steps < 1:
        raise ValueError(f"--classifier-steps {args.classifier_steps}: must be >= 1")
    if args.out:
        out = Path(args.out)
        if out.is_dir():
            raise ValueError(f"--out {out}: is a directory; give the path of the JSON "
                             f"file to write (e.g. {out / 'evaluate.json'})")
        parent = next(p for p in [out.absolute().parent, *out.absolute().parents] if p.exists())
        if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
            raise PermissionError(f"--out {out}: cannot create a file under {parent}")


def _write_json(path: Path, text: str) -> None:
    """Write atomically: an interrupted write never leaves a half JSON file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    from .progress import to_stderr
    from .training.monitor import evaluate_checkpoint

    try:
        _check_args(args)
        row = evaluate_checkpoint(
            args.checkpoint, data=args.data, num=args.num, seed=args.seed,
            use_ema=not args.no_ema, fid=args.fid, inception_weights=args.inception_weights,
            classifier=args.classifier, classifier_steps=args.classifier_steps,
            device=args.device, progress=to_stderr)
    except (FileNotFoundError, ValueError, ImportError, PermissionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(row, indent=2)
    print(text)
    if args.out:
        _write_json(Path(args.out), text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(exits.run(main))
