"""What the user should see while training, besides losses: diversity, the penalty, quality.

- every tick: the fake/real diversity ratio (pixel and critic-feature space) and the
  mode-collapse alarm, printed and written to TensorBoard the moment it trips;
- with every sample grid: a histogram of ||grad D(x_hat)|| and gradient-magnitude maps;
- every ``eval.every`` steps and at the end: SWD, diversity, optional FID/KID and
  domain-classifier metrics on ``eval.num`` EMA samples generated across all ranks, appended
  to ``metrics.jsonl`` in the run dir.
"""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator

from .. import ranks
from ..config import Config
from ..data.format import check_shard, read_manifest, shard_paths
from ..nets import classes_in_turn


def check_ready(cfg: Config, shard_dir: Path | None) -> None:
    """Everything an evaluation will need, checked at start-up: the FID weights, a labelled set
    and a writable cache for the classifier, intact shards to compare with. A run must not
    spend hours to fail at its first evaluation."""
    ev = cfg.eval
    if shard_dir is None:
        return  # evaluation is skipped (and says so) for sets without a manifest
    if ev.fid:
        from ..metrics.fid import check_inception_available

        check_inception_available(ev.inception_weights or None)
    manifest = read_manifest(shard_dir)
    if ev.classifier:
        from ..metrics.classifier import default_cache_dir

        if not manifest["class_names"]:
            raise ValueError(f"eval.classifier=true needs labelled shards; {shard_dir} "
                             f"has no class labels (set eval.classifier=false)")
        cache = default_cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        if not os.access(cache, os.W_OK):
            raise PermissionError(f"eval.classifier: the classifier cache {cache} is not writable "
                                  f"(set $WGAN_DIST_CACHE)")
    # The shards the evaluation reads (the first ones, up to eval.num images), checksummed.
    need = ev.num
    for entry, path in zip(manifest["shards"], shard_paths(shard_dir, manifest)):
        check_shard(str(path), None, entry.get("sha256"))
        need -= int(entry.get("count", 0))
        if need <= 0:
            break


class QualityMonitor:
    def __init__(self, acc: Accelerator, cfg: Config, writer: Any, run_dir: Path,
                 shard_dir: Path | None, say: Callable[[str], None] | None = None) -> None:
        from ..metrics import CollapseAlarm

        self.acc, self.cfg, self.writer, self.run_dir = acc, cfg, writer, run_dir
        self.shard_dir = shard_dir
        self.say = say or (lambda m: ranks.main_print(acc, m))
        self.alarm = CollapseAlarm(cfg.eval.collapse_threshold, cfg.eval.collapse_patience)
        self.alarms: list[str] = []
        self.firing = False
        """Whether the collapse alarm fired at the last check (every rank alike)."""
        self._real: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self._classifier = None

    # ------------------------------------------------------------------ per tick
    @torch.no_grad()
    def check_diversity(self, generator: torch.nn.Module, critic: Any, real: torch.Tensor,
                        step: int, labels: torch.Tensor | None = None) -> dict[str, float]:
        """Diversity of the *training* generator on fresh noise vs the last real batch; for a
        conditional model, fakes drawn for that batch's ``labels`` and pairs taken within a
        class (a generator that makes one image per class is collapsed, whatever its classes).

        The generator runs in train mode, as the critic sees it (in eval mode an early
        generator's BatchNorm running statistics make every output alike); its BatchNorm
        buffers are restored afterwards so this look changes nothing. Computed on every rank
        from its own batch and averaged, so every rank sees the same alarm state."""
        from ..metrics import diversity_stats

        g = ranks.own_generator(self.acc, torch.device("cpu"), self.cfg.train.seed, "diversity", step)
        z = torch.randn(real.shape[0], self.cfg.model.latent_dim, generator=g).to(real.device)
        with _looking(generator):
            fake = (generator(z) if labels is None else generator(z, labels)).float()
        stats = diversity_stats(fake, real.float(), _Features(critic), fake_labels=labels, real_labels=labels)
        keep = {k: torch.tensor(float(v)) for k, v in stats.items() if k.endswith("ratio")}
        reduced = ranks.reduce_mean(self.acc, keep)
        for k, v in reduced.items():
            self.writer.add_scalar(f"Diversity/{k}", v, step)
        warm = step >= self.cfg.eval.collapse_warmup * self.cfg.train.steps
        self.firing = bool(warm and self.alarm.update(reduced))
        if self.firing:
            msg = f"WARNING step {step}: {self.alarm.message}"
            self.alarms.append(msg)
            self.say(msg)
            self.writer.add_text("Alerts/mode_collapse", msg, step)
            self.writer.add_scalar("Alerts/mode_collapse", 1.0, step)
        return reduced

    # ------------------------------------------------------------------ with samples
    def gp_visuals(self, generator: torch.nn.Module, critic: Any, real: torch.Tensor, z: torch.Tensor,
                   step: int) -> None:
        """The penalty's histogram and gradient maps on the last batch (main process only).
        The generator runs in train mode, as the critic saw it, and leaves its BatchNorm
        buffers as they were (a look must not change the run: a resumed run would otherwise
        differ from one that sampled at other steps)."""
        if self.cfg.eval.gp_visuals:
            ranks.on_main(self.acc, self._gp_visuals, generator, critic, real, z, step)

    def _gp_visuals(self, generator: torch.nn.Module, critic: Any, real: torch.Tensor, z: torch.Tensor,
                    step: int) -> None:
        from ..metrics import log_gradient_visuals

        with torch.no_grad(), _looking(generator):
            fake = generator(z)
        out = log_gradient_visuals(self.writer, critic, real, fake, step, tag="GP")
        self.writer.add_scalar("GP/fraction_norm_within_0.1_of_1", out["grad_norm_near1"], step)

    # ------------------------------------------------------------------ evaluation
    def _real_set(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self._real is None:
            from ..metrics import load_shard_tensors

            images, labels, _ = load_shard_tensors(str(self.shard_dir), limit=self.cfg.eval.num)
            self._real = (images, labels)
        return self._real

    @torch.no_grad()
    def generate_global(self, generator: torch.nn.Module, num: int,
                        seed_tag: str = "eval") -> tuple[torch.Tensor, torch.Tensor | None]:
        """num EMA samples and, for a conditional model, their requested labels (the classes
        in turn: sample i is class i mod K). Rank r makes a contiguous slice; gathered in index
        order, so the set is the same on 1 or N processes (sample i always comes from latent
        i and label i)."""
        mine, per = ranks.own_share(self.acc, num)
        padded = per * self.acc.num_processes
        z = torch.randn(padded, self.cfg.model.latent_dim,
                        generator=ranks.generator_for(torch.device("cpu"), self.cfg.train.seed, seed_tag))
        y = classes_in_turn(padded, self.cfg.model.num_classes if self.cfg.model.conditional else 0)
        z_mine = z[mine].to(self.acc.device)
        y_mine = y[mine].to(self.acc.device) if y is not None else None
        fake = torch.cat([generator(z_mine[i:i + 256], None if y_mine is None else y_mine[i:i + 256]).float()
                          for i in range(0, per, 256)])
        fake = self.acc.gather(fake)[:num].cpu()
        return fake, (y[:num] if y is not None else None)

    def evaluate(self, generator: torch.nn.Module, step: int, nimg: int) -> dict[str, float]:
        """Every rank generates; rank 0 computes and writes; the result is broadcast back."""
        if self.shard_dir is None:
            self.say("evaluation skipped: the shards have no manifest.json")
            return {}
        t0 = time.time()
        fake, fake_labels = self.generate_global(generator, self.cfg.eval.num)
        result = ranks.broadcast_from_main(self.acc, ranks.on_main(self.acc, self._compute,
                                                                   fake, fake_labels))
        ranks.on_main(self.acc, self._record, result, step, nimg, time.time() - t0)
        return result

    def has_result(self, step: int) -> bool:
        """Whether metrics.jsonl already holds an evaluation of ``step``."""
        path = self.run_dir / "metrics.jsonl"
        if not path.is_file():
            return False
        return any(json.loads(line).get("step") == step
                   for line in path.read_text().splitlines() if line.strip())

    def _record(self, result: dict[str, float], step: int, nimg: int, seconds: float) -> None:
        """TensorBoard scalars, a metrics.jsonl row and one console line."""
        for k, v in result.items():
            self.writer.add_scalar(f"Metrics/{k}", v, step)
        row = {"step": step, "kimg": nimg / 1000, "seconds": round(seconds, 2), **result}
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        shown = "  ".join(f"{k} {v:.4g}" for k, v in result.items()
                          if k in ("fid", "kid_mean", "swd_avg", "div_ratio", "cls_acc", "cls_covered", "cls_rkl"))
        self.say(f"eval step {step}: {shown}  ({row['seconds']}s)")

    def _compute(self, fake: torch.Tensor, fake_labels: torch.Tensor | None) -> dict[str, float]:
        from ..metrics import evaluate_samples, get_or_train_classifier

        real, labels = self._real_set()
        ev = self.cfg.eval
        if ev.classifier and labels is not None and self._classifier is None:
            self._classifier = get_or_train_classifier(str(self.shard_dir), steps=ev.classifier_steps,
                                                       progress=self.say)
        return evaluate_samples(
            fake, real, fake_labels=fake_labels, real_labels=labels, classifier=self._classifier,
            fid_features="inception" if ev.fid else None,
            inception_weights=ev.inception_weights or None, seed=self.cfg.train.seed,
            progress=self.say)


@contextmanager
def _looking(module: torch.nn.Module):
    """Run ``module`` for a look: its buffers (BatchNorm running statistics and counts) are
    put back afterwards, so the look leaves the run as it was."""
    kept = {k: v.clone() for k, v in module.named_buffers()}
    try:
        yield module
    finally:
        with torch.no_grad():
            for k, v in module.named_buffers():
                v.copy_(kept[k])


class _Features(torch.nn.Module):
    """The critic's trunk as a feature extractor (no gradients, eval)."""

    def __init__(self, critic: Any) -> None:
        super().__init__()
        self.critic = critic

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In the weights' dtype (16-bit under DeepSpeed bf16/fp16), features back in fp32.
        return self.critic.features(x.to(next(self.critic.parameters()).dtype)).float()


def evaluate_checkpoint(checkpoint: str, *, data: str | None = None, num: int = 5000,
                        seed: int = 0, use_ema: bool = True, fid: bool = False,
                        inception_weights: str | None = None, classifier: bool = False,
                        classifier_steps: int = 2000, device: str = "cpu",
                        progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The quality of a checkpoint's generator against real shards (``evaluate``'s JSON row).

    ``data`` defaults to the run's own shards. A conditional generator draws the classes in
    turn, and the classifier's accuracy is measured against those requested labels."""
    from ..cache import builtin_dir
    from ..metrics import evaluate_samples, get_or_train_classifier, load_shard_tensors
    from .samples import load_generator, sample

    g, meta = load_generator(checkpoint, device, use_ema=use_ema)
    cfg = meta["config"]
    data = data or cfg.data.shards
    if data == "builtin":  # the trainer's cache of the built-in set
        data = str(builtin_dir(cfg.data.cache_dir, cfg.data.resolution, cfg.data.channels))
    if not (Path(data) / "manifest.json").is_file():
        raise FileNotFoundError(f"{data}: not a shard dir with manifest.json (give --data)")
    real, labels, _ = load_shard_tensors(data, limit=num)
    if classifier and labels is None:
        raise ValueError(f"{data} is unlabelled; --classifier needs class labels")
    fake_labels = classes_in_turn(num, g.num_classes)
    fake = sample(g, num, seed=seed, labels=fake_labels)
    clf = (get_or_train_classifier(data, steps=classifier_steps, progress=progress)
           if classifier else None)
    result = evaluate_samples(fake, real, fake_labels=fake_labels, real_labels=labels,
                              classifier=clf, fid_features="inception" if fid else None,
                              inception_weights=inception_weights, seed=seed, progress=progress)
    return {"checkpoint": meta["path"], "step": meta["step"], "kimg": meta["nimg"] / 1000,
            "num_fake": len(fake), "num_real": len(real), **result}
