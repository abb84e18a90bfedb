"""Quality on real QuickDraw drawings, beside the official WGAN-GP MNIST recipe.

    python benchmarks/bench_quality.py            # 320 kimg a model; ~70 min on 2 cores
    python benchmarks/bench_quality.py --quick    # 16 kimg a model; a few minutes
    python benchmarks/bench_quality.py --kimg 160 --width 32 --num 800
    python benchmarks/bench_quality.py --models conditional --set optim.n_critic=5   # one row, a variant

Data: ../shared/data/quickdraw (apple, bicycle, cat, fish; 3,000 real drawings each, the
(N, 1, 784) layout as found). Each category is split in file order: drawings 0-1999 train the
GANs, 2000-2799 train the domain classifier, 2800-2999 are the test set every figure is
measured against. The GAN training files keep the shared files' layout and go through
`python -m wgan_dist.shard`.

Models (each to the same number of real images seen by the critic, one torch thread; ours
take their critic steps and batch from the preset, and ``--set`` adds overrides to try a recipe):
1. ours, conditional: `--config quickdraw_cond` on the 4 classes (projection critic plus an
   auxiliary classifier, 2 critic steps), ``model.g_width/d_width`` = ``--width``; scored on
   requested-class accuracy.
2. ours, unconditional bicycles: `--config quickdraw_bicycle` on the bicycle drawings.
3. the reference: a plain re-implementation of the official recipe (Gulrajani et al. 2017,
   ``gan_mnist.py``): DIM 64, 5x5 convolutions (G: linear -> 4x4x4DIM, deconvs to 8x8 cropped
   to 7x7, 14, 28, sigmoid; D: three stride-2 convs + linear, LeakyReLU), lambda 10, 5 critic
   steps, Adam 1e-4 (0.5, 0.9), batch 50, latent 128, no EMA; on the same bicycle drawings.
   Its generator is kept at every 10 % of the run with the CPU time so far, to compare at
   equal images seen and at equal CPU time (the snapshot whose CPU time is nearest ours).

Scores against the test drawings (``--num`` fakes, as many as the test set by default),
with a domain classifier (``metrics.train_classifier``) trained only on the classifier split:
accuracy (the requested class; for bicycle models: "bicycle") beside the classifier's own
accuracy on the real test drawings, the fraction confidently one class (p >= 0.9), the
Frechet distance in the classifier's features beside the real-vs-real floor (training
drawings vs test drawings, same count), SWD. Writes the sample grids beside a real grid to
benchmarks/out/quality/ and the numbers to benchmarks/out/bench_quality.json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from _common import OUT_DIR, REPO, write_result

QUICKDRAW = REPO.parent / "shared" / "data" / "quickdraw"
SPLIT = {"train": (0, 2000), "clf": (2000, 2800), "test": (2800, 3000)}


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _run(cmd: list[str], what: str) -> float:
    """Run a CLI; its CPU seconds (it and its children). Exits on failure with its tail."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "WORLD_SIZE"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    before = _children_cpu()
    r = subprocess.run([sys.executable, *cmd], cwd=REPO, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"bench_quality: {what} failed ({r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")
    return _children_cpu() - before


# ------------------------------------------------------------------ data
def split_files(work: Path) -> dict[str, Path]:
    """The shared files cut into train / clf / test folders, layout unchanged."""
    files = sorted(QUICKDRAW.glob("*.npy"))
    if not files:
        sys.exit(f"bench_quality: no .npy files in {QUICKDRAW} (see its README)")
    dirs = {part: work / part for part in (*SPLIT, "train_bicycle")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    for f in files:
        arr = np.load(f, mmap_mode="r")
        for part, (a, b) in SPLIT.items():
            np.save(dirs[part] / f.name, np.ascontiguousarray(arr[a:b]))
        if f.stem == "bicycle":
            np.save(dirs["train_bicycle"] / f.name, np.ascontiguousarray(arr[slice(*SPLIT["train"])]))
    return dirs


def shard(src: Path, out: Path) -> Path:
    _run(["-m", "wgan_dist.shard", str(src), "-o", str(out), "-s", "28", "--no-progress"],
         f"sharding {src}")
    return out


def tensors(shards: Path, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [-1, 1] and labels indexed by ``names`` (the conditional model's classes)."""
    from wgan_dist.metrics import load_shard_tensors

    x, y, own = load_shard_tensors(shards)
    return x, torch.tensor([names.index(own[i]) for i in y.tolist()])


# ------------------------------------------------------------------ the reference recipe
class RefG(nn.Module):
    """gan_mnist.py's generator (DIM 64, latent 128)."""

    def __init__(self, dim: int = 64, latent: int = 128) -> None:
        super().__init__()
        self.dim, self.latent_dim, self.num_classes = dim, latent, 0
        self.fc = nn.Sequential(nn.Linear(latent, 4 * 4 * 4 * dim), nn.ReLU())
        self.d1 = nn.Sequential(nn.ConvTranspose2d(4 * dim, 2 * dim, 5, 2, 2, output_padding=1), nn.ReLU())
        self.d2 = nn.Sequential(nn.ConvTranspose2d(2 * dim, dim, 5, 2, 2, output_padding=1), nn.ReLU())
        self.d3 = nn.ConvTranspose2d(dim, 1, 5, 2, 2, output_padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.fc(z).view(-1, 4 * self.dim, 4, 4)
        x = self.d1(x)[:, :, :7, :7]
        return torch.sigmoid(self.d3(self.d2(x)))  # [0, 1], as MNIST there


class RefD(nn.Module):
    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        act = nn.LeakyReLU(0.2)
        self.net = nn.Sequential(nn.Conv2d(1, dim, 5, 2, 2), act, nn.Conv2d(dim, 2 * dim, 5, 2, 2), act,
                                 nn.Conv2d(2 * dim, 4 * dim, 5, 2, 2), act, nn.Flatten(),
                                 nn.Linear(4 * 4 * 4 * dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def train_reference(real01: torch.Tensor, kimg: float, seed: int = 0) -> list[dict]:
    """The recipe's loop; snapshots of G at every 10 % with images seen and CPU seconds."""
    torch.manual_seed(seed)
    g, d = RefG(), RefD()
    opt_g = torch.optim.Adam(g.parameters(), lr=1e-4, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(d.parameters(), lr=1e-4, betas=(0.5, 0.9))
    batch, n_critic, lam = 50, 5, 10.0
    iters = max(1, round(kimg * 1000 / (batch * n_critic)))
    marks = {max(1, round(iters * k / 10)) for k in range(1, 11)}
    gen = torch.Generator().manual_seed(seed)
    snaps, t0 = [], time.process_time()
    for it in range(1, iters + 1):
        for _ in range(n_critic):
            x = real01[torch.randint(0, len(real01), (batch,), generator=gen)]
            with torch.no_grad():
                fake = g(torch.randn(batch, 128))
            eps = torch.rand(batch, 1, 1, 1)
            xh = (eps * x + (1 - eps) * fake).requires_grad_(True)
            (grad,) = torch.autograd.grad(d(xh).sum(), xh, create_graph=True)
            gp = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
            loss_d = d(fake).mean() - d(x).mean() + lam * gp
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
        for p in d.parameters():
            p.requires_grad_(False)
        loss_g = -d(g(torch.randn(batch, 128))).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        for p in d.parameters():
            p.requires_grad_(True)
        if it in marks:
            snaps.append({"kimg": it * batch * n_critic / 1000, "cpu_s": time.process_time() - t0,
                          "state": {k: v.clone() for k, v in g.state_dict().items()}})
    return snaps


# ------------------------------------------------------------------ scoring
def score(clf, fake: torch.Tensor, want: torch.Tensor, test: torch.Tensor) -> dict[str, float]:
    from wgan_dist.metrics import (classifier_fid, conditional_accuracy, confident_fraction,
                                   sliced_wasserstein)

    return {"acc": conditional_accuracy(clf, fake, want), "confident": confident_fraction(clf, fake),
            "frechet": classifier_fid(clf, test, fake),
            "swd": sliced_wasserstein(test, fake)["avg"]}


def grid(images: torch.Tensor, path: Path, nrow: int) -> None:
    from torchvision.utils import save_image

    save_image(images * 0.5 + 0.5, path, nrow=nrow, padding=1, pad_value=0.5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="16 kimg a model (a smoke test)")
    ap.add_argument("--kimg", type=float, default=320.0, help="real images seen by each critic")
    ap.add_argument("--width", type=int, default=32, help="model.g_width / d_width of ours")
    ap.add_argument("--num", type=int, default=0, help="fakes scored (default: the test set's size)")
    ap.add_argument("--classifier-steps", type=int, default=2000)
    ap.add_argument("--work", type=Path, default=None, help="keep the runs here (default: a temp dir)")
    ap.add_argument("--models", nargs="+", choices=("conditional", "bicycle", "reference"),
                    default=["conditional", "bicycle", "reference"],
                    help="which models to train (the reference's equal-CPU row needs 'bicycle')")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra config overrides for ours (a recipe under trial; train.steps and log.* stay the benchmark's own)")
    a = ap.parse_args()
    kimg = 16.0 if a.quick else a.kimg
    torch.set_num_threads(1)
    out_dir = OUT_DIR / "quality"
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.TemporaryDirectory(prefix="bench_quality-") if a.work is None else None
    work = Path(tmp.name) if tmp else a.work
    dirs = split_files(work / "data")
    shards = {p: shard(dirs[p], work / f"shards_{p}") for p in ("train", "train_bicycle", "clf", "test")}
    names = json.loads((shards["train"] / "manifest.json").read_text())["class_names"]
    from wgan_dist.metrics import conditional_accuracy, confident_fraction, classifier_fid, train_classifier
    from wgan_dist.training.samples import load_generator, sample

    x_clf, y_clf = tensors(shards["clf"], names)
    x_test, y_test = tensors(shards["test"], names)
    x_train, y_train = tensors(shards["train"], names)
    bike = names.index("bicycle")
    clf = train_classifier(x_clf, y_clf, len(names), steps=a.classifier_steps)
    num = a.num or len(x_test)
    gen = torch.Generator().manual_seed(0)
    floor_idx = torch.randperm(len(x_train), generator=gen)[:len(x_test)]
    bt, btr = x_test[y_test == bike], x_train[y_train == bike]
    real = {"acc": conditional_accuracy(clf, x_test, y_test),
            "confident": confident_fraction(clf, x_test),
            "frechet_floor_4class": classifier_fid(clf, x_test, x_train[floor_idx]),
            "frechet_floor_bicycle": classifier_fid(clf, bt, btr[:len(bt)]),
            "acc_bicycle": conditional_accuracy(clf, bt, torch.full((len(bt),), bike))}
    print(f"real test drawings: classifier accuracy {real['acc']:.3f}, confident "
          f"{real['confident']:.3f}; Frechet floor 4-class {real['frechet_floor_4class']:.2f}, "
          f"bicycles {real['frechet_floor_bicycle']:.2f}", flush=True)
    per_cls = [x_test[y_test == k][:8] for k in range(len(names))]
    grid(torch.cat(per_cls), out_dir / "real.png", 8)

    from wgan_dist.config import load_config

    rows = {}
    for name, preset, data, test, want_all in (
            ("ours conditional", "quickdraw_cond", shards["train"], x_test, None),
            ("ours bicycle", "quickdraw_bicycle", shards["train_bicycle"], bt, bike)):
        if name.split()[-1] not in a.models:
            continue
        recipe = [f"data.shards={data}", f"model.g_width={a.width}", f"model.d_width={a.width}", *a.set]
        cfg = load_config(preset, recipe)
        # Equal real images through the critic: the preset's own critic steps and batch.
        steps = max(1, round(kimg * 1000 / (cfg.optim.n_critic * cfg.train.batch_size)))
        run = work / name.replace(" ", "_")
        cpu = _run(["-m", "wgan_dist.train", "--config", preset, *recipe, f"train.steps={steps}",
                    f"log.run_dir={run}", f"log.sample_every={steps}", f"log.ckpt_every={steps}",
                    f"log.tick_every={max(1, steps // 10)}", "eval.num=64", "data.workers=1"],
                   f"training {name}")
        g, meta = load_generator(run)
        labels = torch.arange(num) % len(names) if g.num_classes else None
        fake = sample(g, num, seed=1, labels=labels)
        want = labels if labels is not None else torch.full((num,), want_all)
        rows[name] = {"kimg": meta["nimg"] / 1000, "cpu_s": cpu, **score(clf, fake, want, test)}
        print(f"{name:<18} {json.dumps({k: round(v, 4) for k, v in rows[name].items()})}", flush=True)
        if g.num_classes:
            grid(torch.cat([fake[labels == k][:8] for k in range(len(names))]), out_dir / "ours_conditional.png", 8)
        else:
            grid(fake[:32], out_dir / "ours_bicycle.png", 8)

    t0 = time.process_time()
    snaps = train_reference((btr + 1) / 2, kimg) if "reference" in a.models else []
    picks = [("reference, equal kimg", snaps[-1])] if snaps else []
    if snaps and "ours bicycle" in rows:
        ours_cpu = rows["ours bicycle"]["cpu_s"]
        picks.append(("reference, equal CPU time", min(snaps, key=lambda s: abs(s["cpu_s"] - ours_cpu))))
    for label, snap in picks:
        g = RefG()
        g.load_state_dict(snap["state"])
        with torch.no_grad():
            fake = g.eval()(torch.randn(num, 128, generator=torch.Generator().manual_seed(1))) * 2 - 1
        rows[label] = {"kimg": snap["kimg"], "cpu_s": snap["cpu_s"],
                       **score(clf, fake, torch.full((num,), bike), bt)}
        print(f"{label:<18} {json.dumps({k: round(v, 4) for k, v in rows[label].items()})}", flush=True)
        if label.endswith("kimg"):
            grid(fake[:32], out_dir / "reference_bicycle.png", 8)
    if snaps:
        print(f"(reference trained in {time.process_time() - t0:.0f} CPU s)")

    head = "| model | kimg | CPU s | accuracy | confident | Frechet (floor) | SWD |"
    lines = [head, "|---|---|---|---|---|---|---|",
             f"| real test drawings | | | {real['acc']:.3f} | {real['confident']:.3f} | "
             f"{real['frechet_floor_4class']:.2f} (4 classes), {real['frechet_floor_bicycle']:.2f} "
             f"(bicycles) | |"]
    for name, r in rows.items():
        floor = real["frechet_floor_4class" if "conditional" in name else "frechet_floor_bicycle"]
        lines.append(f"| {name} | {r['kimg']:.0f} | {r['cpu_s']:.0f} | {r['acc']:.3f} | "
                     f"{r['confident']:.3f} | {r['frechet']:.2f} ({r['frechet'] / floor:.1f}x) | "
                     f"{r['swd']:.1f} |")
    print("\n".join(lines))
    write_result("bench_quality" + ("_quick" if a.quick else ""),
                 {"args": {**vars(a), "work": str(a.work)}, "kimg": kimg, "classes": names,
                  "real": real, "rows": rows, "table": lines, "grids": str(out_dir)})
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
