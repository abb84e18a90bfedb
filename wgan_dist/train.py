"""Entry point: parse, build, train, close.

    accelerate launch -m wgan_dist.train                      # built-in dataset, defaults
    accelerate launch -m wgan_dist.train --config celeba128 train.steps=20000
    python -m wgan_dist.train -d images/ -s 128 -l 100 -b 128  # the seed trainer's flags
    python -m wgan_dist.train --run-dir runs/X --resume       # continue runs/X as it was made

Exit codes: 0 finished, 1 failed, 2 refused (bad setting, data or checkpoint), 75 stopped by
a signal after saving a checkpoint (resume it), 128+N ended by signal N without one.
"""
from __future__ import annotations

import argparse
import os
import sys

from . import exits
from .exits import HelpFormatter
from .config import ConfigError, dump_yaml, load_config


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m wgan_dist.train", description=__doc__,
                                formatter_class=HelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--config", "-c", default=None,
                   help="preset name from configs/ (e.g. celeba128) or a YAML path")
    p.add_argument("overrides", nargs="*", metavar="section.field=value",
                   help="dotted overrides, e.g. train.batch_size=64 optim.n_critic=5")
    p.add_argument("-d", "--dir", help="image folder or shard dir (data.shards)")
    p.add_argument("-s", "--size", type=int, help="resolution (data.resolution)")
    p.add_argument("-l", "--latent-size", type=int, help="latent size (model.latent_dim)")
    p.add_argument("-b", "--batch-size", type=int, help="global batch (train.batch_size)")
    p.add_argument("--channels", type=int, choices=(1, 3), help="data.channels")
    p.add_argument("--run-dir", help="log.run_dir")
    p.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue a run: latest checkpoint of the run dir (default), 'auto' "
                        "(latest if any, else start), or a checkpoint path")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in a run dir that already has checkpoints")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    p.add_argument("--debug", action="store_true", help="print the traceback of an error too")
    # The `deepspeed` launcher passes --local_rank=N besides LOCAL_RANK, which is what is read.
    p.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # `--resume train.steps=600`: that is an override, not a checkpoint; it stays in its place
    # among the overrides (the last one given wins).
    for i, arg in enumerate(argv[:-1]):
        nxt = argv[i + 1]
        if arg == "--resume" and "=" in nxt and not nxt.startswith("-") and not os.path.exists(nxt):
            argv[i] = "--resume=latest"
    # Intermixed: overrides may come before and after the flags (`--overwrite a.b=1 c.d=2`).
    return p.parse_intermixed_args(argv)


def explicit_overrides(args: argparse.Namespace) -> list[str]:
    """The seed-trainer flags as dotted overrides, then the dotted overrides themselves."""
    flags = {"data.shards": args.dir, "data.resolution": args.size,
             "model.latent_dim": args.latent_size, "train.batch_size": args.batch_size,
             "data.channels": args.channels, "log.run_dir": args.run_dir}
    return [f"{k}={v}" for k, v in flags.items() if v is not None] + list(args.overrides)


def default_preset(overrides: list[str]) -> str | None:
    """configs/default.yaml, the built-in data's own recipe, for a run given neither a preset
    nor data (the README's main command); any data source keeps the schema's defaults (the
    WGAN-GP paper's recipe)."""
    return None if any(o.startswith("data.shards=") for o in overrides) else "default"


def build_config(args: argparse.Namespace, log=None, hold=None):
    """(the config to run, the checkpoint to continue from or None): preset + overrides; with
    --resume, the run's own config from its checkpoint (read once) with the explicit
    overrides on top (``training.resume``). ``hold(run_dir)`` is called with the run dir
    before any checkpoint in it is read (the run-dir lock)."""
    overrides = explicit_overrides(args)
    hold = hold or (lambda run_dir: None)
    if args.resume is None:
        cfg = load_config(args.config or default_preset(overrides), overrides)
        hold(cfg.run_dir)
        return cfg, None
    cfg = load_config(args.config, overrides)
    from .training.resume import config_for_resume, target_run_dir

    run_dir = target_run_dir(cfg, args.resume, overrides)
    hold(run_dir)
    preset = load_config(args.config, []) if args.config else None
    return config_for_resume(cfg, preset, overrides, args.resume, log=log or _main_print,
                             run_dir=run_dir)


def _main_print(text: str) -> None:
    from .ranks import launched_rank

    if launched_rank() == 0:
        print(text, flush=True)


def dry_run(cfg, log) -> int:
    """The config with what the launcher settles (backend, ZeRO stage, precision), as YAML."""
    from .config import validate
    from .training.backends import resolve

    for note in resolve(cfg):
        log(note)
    validate(cfg)
    print(dump_yaml(cfg), end="")
    return exits.OK


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # With --dry-run stdout is the YAML alone; notes go to stderr.
    log = (lambda m: print(m, file=sys.stderr)) if args.dry_run else None
    locks = []

    def hold(run_dir) -> None:
        """One run per directory: the main process holds it from before any checkpoint is
        read until it exits (training.rundir)."""
        from .ranks import launched_rank
        from .training.rundir import RunLock

        if not args.dry_run and launched_rank() == 0:
            locks.append(RunLock(run_dir, say=log or _main_print).acquire())
    try:
        try:
            cfg, resume = build_config(args, log=log, hold=hold)
            if args.dry_run:
                return dry_run(cfg, log)
        except ConfigError as e:
            print(f"config error: {e}", file=sys.stderr)
            return exits.REFUSED
        return train(cfg, resume or args.resume, args.overwrite)
    finally:
        for lock in locks:
            lock.release()


def train(cfg, resume, overwrite: bool) -> int:
    from .training.trainer import Trainer  # heavy imports only when training

    trainer = Trainer(cfg, resume=resume, overwrite=overwrite)
    try:
        trainer.train()
    except BaseException:
        trainer.close(failed=True)
        raise
    trainer.close()
    if trainer.stopped:
        return exits.STOPPED
    print_where(trainer)
    return exits.OK


def print_where(trainer) -> None:
    """Where the run's outputs are, and the next command (main process only)."""
    from .ranks import main_print

    run = trainer.run_dir.resolve()
    main_print(trainer.acc,
               f"done at step {trainer.step}.\n  samples:     {run / 'samples'}\n"
               f"  tensorboard: tensorboard --logdir {run / 'logs'}\n"
               f"  checkpoint:  {run / 'checkpoints'}\n"
               f"  generate:    python -m wgan_dist.generate --checkpoint {run} --num 64 --out {run / 'generated'}")


if __name__ == "__main__":
    sys.exit(exits.run(main, prefix="error"))
