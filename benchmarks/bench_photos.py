"""Quality on real photographs at 64 px (AFHQ cats), beside the official WGAN-GP 64x64 recipe.

    python benchmarks/bench_photos.py                     # ours, reference DCGAN and ResNet; ~2 h on 2 cores
    python benchmarks/bench_photos.py --quick             # 3 kimg / 60 CPU s a model, a smoke run (~6 min)
    python benchmarks/bench_photos.py --models small small_noaug   # item 4: 300 images, with and without DiffAugment
    python benchmarks/bench_photos.py --models ours --set optim.n_critic=1 --tag n1   # a recipe under trial

Data: ../shared/data/afhq_cat/cat (5,153 AFHQ cat faces, 128 px JPEG), split once by a seeded
permutation of the sorted file names: 600 photos are the test set every figure is measured
against, 1,000 train the judge network and nothing else, the other 3,553 train the GANs (the
small-data models: the first 300 of them). Each split is a folder of links to the JPEGs,
sharded at 64 px by ``python -m wgan_dist.shard`` as a user would.

Models (one torch thread each; CPU seconds are the process's and its loader worker's):
* ``ours``: ``--config celeba64`` at the CPU width (``model.g_width/d_width`` = ``--width``),
  to ``--kimg`` real images through the critic or ``--cpu-min`` CPU minutes (then stopped
  with Ctrl-C, which checkpoints), whichever comes first; its generator kept at every 10 % of
  the run with the CPU seconds so far (scored at the end, and at the kimg each reference
  reached);
* ``ref_dcgan``, ``ref_resnet``: the official recipe (``_ref64.py``: DIM 64, batch 64, Adam
  1e-4 (0, 0.9), lambda 10, 5 critic steps, no EMA) until ``--kimg`` or ours' CPU time
  (``--cpu-min`` when ours is not run), whichever comes first, snapshots at every 10 % of that
  budget; scored at the snapshot nearest ours' CPU time (equal CPU time) and at its last one,
  where ours is scored at the same kimg (equal images: per image the recipe cost ~4.5x (DCGAN)
  and ~48x (ResNet) ours' CPU here on 2026-12-07, so it does not reach ``--kimg`` in ours' CPU
  time). ``--resnet-cpu-min`` gives the ResNet a shorter budget; ours is then also scored at
  its checkpoint nearest the ResNet's CPU time;
* ``small``, ``small_noaug``: ``--config small_data64`` on 300 training photos, and the same
  without DiffAugment (``data.diffaug=``), to ``--small-kimg``.

Scores (``--num`` samples, default as many as the test photos; ``wgan_dist.metrics.photo``):
Frechet distance in the features of the judge (a rotation-prediction network trained on the
1,000 judge photos only) against the test photos, beside its floor (as many training photos
as test photos, against the test photos); the fraction of samples in which OpenCV's cat-face
Haar cascade finds a face, beside the test photos' own rate; SWD (x1e3, ProGAN's, per
Laplacian level and average; the real-vs-real floor beside it); memorisation: the median
distance from a sample to its nearest training photo (or its mirror image) over the same for
the test photos, in pixels and in judge features (below 1: closer than unseen photos), and
the fraction of samples closer than the test photos' 5 % quantile (copies show up there).
Grids go to benchmarks/out/photos/, numbers to benchmarks/out/bench_photos[_TAG].json.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import OUT_DIR, REPO, write_result

CATS = REPO.parent / "shared" / "data" / "afhq_cat" / "cat"
SPLIT = {"test": 600, "judge": 1000}  # the rest trains the GANs
SMALL = 300
SIGNS = REPO.parent / "shared" / "data" / "sign_digits"


# ------------------------------------------------------------------ data
def split_folders(work: Path, quick: bool) -> dict[str, Path]:
    """Folders of links to the cat JPEGs: test / judge / train / small (flat: unlabelled)."""
    files = sorted(CATS.glob("*.jpg"))
    if len(files) < 2000:
        sys.exit(f"bench_photos: expected the 5,153 AFHQ cats in {CATS}, found {len(files)} .jpg files")
    order = np.random.default_rng(0).permutation(len(files))
    n_test, n_judge = SPLIT["test"], SPLIT["judge"]
    parts = {"test": order[:n_test], "judge": order[n_test:n_test + n_judge],
             "train": order[n_test + n_judge:]}
    parts["small"] = parts["train"][:SMALL]
    if quick:  # a smoke run: fewer photos to shard and score
        parts = {"test": parts["test"][:200], "judge": parts["judge"][:400],
                 "train": parts["train"][:800], "small": parts["small"]}
    dirs = {}
    for name, idx in parts.items():
        d = work / "data" / name
        d.mkdir(parents=True, exist_ok=True)
        for i in sorted(idx.tolist()):
            link = d / files[i].name
            if not link.exists():
                link.symlink_to(files[i])
        dirs[name] = d
    return dirs


def env1() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "WORLD_SIZE"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    return env


def cli(args: list[str], what: str) -> None:
    r = subprocess.run([sys.executable, *args], cwd=REPO, env=env1(), capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"bench_photos: {what} failed ({r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")


def shard(src: Path, out: Path) -> Path:
    if not (out / "manifest.json").is_file():
        cli(["-m", "wgan_dist.shard", str(src), "-o", str(out), "-s", "64", "--channels", "3",
             "--no-progress", "--overwrite"], f"sharding {src}")
    return out


def load(shards: Path) -> torch.Tensor:
    from wgan_dist.metrics import load_shard_tensors

    return load_shard_tensors(shards)[0]


def sign_folders(work: Path, quick: bool) -> dict[str, Path]:
    """Class folders of links to the sign-digit photos: per class, a seeded 20 test, 40 for
    the scoring classifier, the rest (~146) train the conditional GAN."""
    dirs = {}
    for cls in range(10):
        files = sorted((SIGNS / str(cls)).glob("*.jpg"))
        if len(files) < 100:
            sys.exit(f"bench_photos: expected ~206 sign-digit photos in {SIGNS / str(cls)}, found {len(files)}")
        order = np.random.default_rng(cls).permutation(len(files))
        parts = {"test": order[:20], "clf": order[20:60], "train": order[60:]}
        if quick:
            parts["train"] = parts["train"][:40]
        for name, idx in parts.items():
            d = work / "signs" / name / str(cls)
            d.mkdir(parents=True, exist_ok=True)
            for i in sorted(idx.tolist()):
                if not (d / files[i].name).exists():
                    (d / files[i].name).symlink_to(files[i])
            dirs[name] = d.parent
    return dirs


def conditional_rows(a, work: Path, width: list[str], out_dir: Path, tag: str) -> dict:
    """Item 6: ``--config animal_faces_cond64`` on the 10 sign-digit classes, scored by a
    domain classifier trained only on the 400 classifier photos (at 32 px, 2x mean-pooled:
    4x cheaper, and a count of fingers survives it): requested-class accuracy and confident
    fraction beside the classifier's own on the test photos, Frechet distance in its features
    beside the floor (training photos against test photos, as many), SWD at 64 px."""
    from wgan_dist.metrics import (classifier_fid, conditional_accuracy, confident_fraction,
                                   load_shard_tensors, sliced_wasserstein, train_classifier)

    dirs = sign_folders(work, a.quick)
    sh = {k: shard(d, work / f"shards_signs_{k}{'_quick' if a.quick else ''}") for k, d in dirs.items()}
    (x_clf, y_clf, names), (x_test, y_test, _), (x_train, _, _) = (
        load_shard_tensors(sh[k]) for k in ("clf", "test", "train"))
    pool = lambda x: torch.nn.functional.avg_pool2d(x, 2)  # noqa: E731
    clf = train_classifier(pool(x_clf), y_clf, len(names), steps=a.clf_steps)
    floor_idx = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(0))[:len(x_test)]
    real = {"acc": conditional_accuracy(clf, pool(x_test), y_test),
            "confident": confident_fraction(clf, pool(x_test)),
            "frechet_floor": classifier_fid(clf, pool(x_test), pool(x_train[floor_idx])),
            "swd_floor": sliced_wasserstein(x_test, x_train[floor_idx])["avg"],
            "counts": {"train": len(x_train), "clf": len(x_clf), "test": len(x_test)}}
    print(f"real sign-digit test photos: classifier accuracy {real['acc']:.3f}, confident "
          f"{real['confident']:.3f}; Frechet floor {real['frechet_floor']:.3f}; SWD floor "
          f"{real['swd_floor']:.1f}", flush=True)
    ckpts = train_ours("animal_faces_cond64", sh["train"], work / f"run_cond{tag}", a.cond_kimg,
                       [*width, *a.set], out_dir / "cond.log", a.reuse,
                       cpu_budget_s=a.cpu_min * 60)
    from wgan_dist.training.samples import load_generator, sample

    g, _ = load_generator(ckpts[-1]["path"])
    num = a.num or 2 * len(x_test)
    want = torch.arange(num) % len(names)
    fake = sample(g, num, seed=1, labels=want)
    row = {"kimg": ckpts[-1]["kimg"], "cpu_s": ckpts[-1]["cpu_s"],
           "acc": conditional_accuracy(clf, pool(fake), want),
           "confident": confident_fraction(clf, pool(fake)),
           "frechet": classifier_fid(clf, pool(x_test), pool(fake)),
           "swd": sliced_wasserstein(x_test, fake)["avg"], "overrides": [*width, *a.set]}
    row["frechet_x"] = row["frechet"] / real["frechet_floor"]
    print(f"conditional (animal_faces_cond64)  kimg {row['kimg']:.1f}  CPU s {row['cpu_s']:.0f}  "
          f"accuracy {row['acc']:.3f}  confident {row['confident']:.3f}  Frechet {row['frechet']:.3f} "
          f"({row['frechet_x']:.1f}x)  SWD {row['swd']:.1f}", flush=True)
    rows8 = torch.cat([fake[want == k][:8] for k in range(len(names))])
    grid(rows8, out_dir / "cond.png", rows=len(names))
    grid(torch.cat([x_test[y_test == k][:8] for k in range(len(names))]), out_dir / "real_signs.png",
         rows=len(names))
    return {"real": real, "row": row}


# ------------------------------------------------------------------ ours: the CLI, CPU tracked
def _tree_cpu(proc) -> float:
    """CPU seconds of a psutil process and its live descendants (and the reaped ones)."""
    import psutil

    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


def train_ours(preset: str, shards: Path, run: Path, kimg: float, overrides: list[str],
               log_path: Path, reuse: bool = False, checkpoints: int = 10,
               cpu_budget_s: float = 0.0) -> list[dict]:
    """Train with the CLI to ``kimg`` real images (the preset's own batch and critic steps),
    a checkpoint every 1/``checkpoints`` of the run; returns one entry per checkpoint: path, step, kimg, CPU seconds
    of the training process tree and wall seconds when the checkpoint appeared. With
    ``cpu_budget_s`` the run is stopped by Ctrl-C (SIGINT: the trainer saves a checkpoint at
    the end of its step and exits 75) once its CPU seconds reach the budget. ``reuse``: a
    finished run of the same command in ``run`` is read back instead of trained again."""
    import psutil

    from wgan_dist.config import load_config
    from wgan_dist.training.checkpoint import list_checkpoints

    recipe = [f"data.shards={shards}", *overrides]
    cfg = load_config(preset, recipe)
    per_step = cfg.optim.n_critic * cfg.train.batch_size
    steps = max(1, round(kimg * 1000 / per_step))
    every = max(1, steps // checkpoints)
    args = ["-m", "wgan_dist.train", "--config", preset, *recipe, f"train.steps={steps}",
            f"log.run_dir={run}", f"log.ckpt_every={every}", "log.keep_checkpoints=0",
            f"log.sample_every={steps}", f"log.tick_every={max(1, steps // 20)}", "eval.num=64",
            "eval.gp_visuals=false", "data.workers=1", "train.threads=1", "--overwrite"]
    print(f"  {preset} {' '.join(recipe[1:])}: {steps} steps x {per_step} real images", flush=True)
    record = run / "bench_cpu.json"
    if reuse and record.is_file() and json.loads(record.read_text())["args"] == [*args, cpu_budget_s]:
        print(f"  reusing the finished run in {run}", flush=True)
        return json.loads(record.read_text())["checkpoints"]
    seen: dict[str, tuple[float, float]] = {}
    with open(log_path, "w") as logf:
        t0 = time.perf_counter()
        p = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env1(), stdout=logf,
                             stderr=subprocess.STDOUT)
        proc = psutil.Process(p.pid)
        cpu, stopping = 0.0, False
        while p.poll() is None:
            cpu = max(cpu, _tree_cpu(proc))
            if cpu_budget_s and cpu >= cpu_budget_s and not stopping:
                p.send_signal(signal.SIGINT)
                stopping = True
            for c in list_checkpoints(run):
                seen.setdefault(c.name, (cpu, time.perf_counter() - t0))
            time.sleep(0.5)
        wall = time.perf_counter() - t0
    if p.returncode not in ((0, 75) if stopping else (0,)):
        sys.exit(f"bench_photos: training {run.name} failed ({p.returncode}); see {log_path}")
    out = []
    for c in list_checkpoints(run):
        step = int(c.stem.split("-")[1])
        cpu_s, wall_s = seen.get(c.name, (cpu, wall))
        out.append({"path": str(c), "step": step, "kimg": step * per_step / 1000,
                    "cpu_s": cpu_s, "wall_s": wall_s})
    record.write_text(json.dumps({"args": [*args, cpu_budget_s], "checkpoints": out}))
    return out


def ours_samples(ckpt: str, num: int) -> torch.Tensor:
    from wgan_dist.training.samples import load_generator, sample

    g, _ = load_generator(ckpt)
    return sample(g, num, seed=1)


# ------------------------------------------------------------------ scoring
class Scorer:
    def __init__(self, judge, test: torch.Tensor, train: torch.Tensor, floor_set: torch.Tensor) -> None:
        from wgan_dist.metrics import sliced_wasserstein
        from wgan_dist.metrics.photo import haar_rate, judge_frechet, load_cascade, memorisation

        self.judge, self.test, self.train = judge, test, train
        self.cascade = load_cascade()
        self.real = {
            "frechet_floor": judge_frechet(judge, test, floor_set),
            "haar": haar_rate(test, self.cascade),
            "haar_train": haar_rate(floor_set, self.cascade),
            "swd_floor": sliced_wasserstein(test, floor_set)["avg"],
        }
        self.real.update({f"nn_{k}": v for k, v in memorisation(test, test, train, judge).items()
                          if k.endswith("heldout_median")})

    def __call__(self, fake: torch.Tensor, train: torch.Tensor | None = None) -> dict[str, float]:
        from wgan_dist.metrics import sliced_wasserstein
        from wgan_dist.metrics.photo import haar_rate, judge_frechet, memorisation

        swd = sliced_wasserstein(self.test, fake)
        mem = memorisation(fake, self.test, self.train if train is None else train, self.judge)
        frechet, haar = judge_frechet(self.judge, self.test, fake), haar_rate(fake, self.cascade)
        return {"frechet": frechet, "frechet_x": frechet / self.real["frechet_floor"],
                "haar": haar, "haar_x": haar / self.real["haar"],
                "swd": swd["avg"], "swd_levels": [swd[k] for k in sorted(swd) if k.startswith("L")],
                **{f"nn_{k}": v for k, v in mem.items()}}


def grid(images: torch.Tensor, path: Path, nrow: int = 8, rows: int = 8) -> None:
    from torchvision.utils import save_image

    save_image(images[:nrow * rows] * 0.5 + 0.5, path, nrow=nrow, padding=1, pad_value=1.0)


def judge_for(images: torch.Tensor, steps: int, cache: Path):
    """The rotation judge, cached by the exact training photos and settings."""
    import hashlib

    from wgan_dist.metrics.photo import RotationJudge, train_rotation_judge

    key = hashlib.sha256(images.numpy().tobytes() + f"{steps}".encode()).hexdigest()[:16]
    path = cache / f"photo_judge-{key}.pt"
    if path.is_file():
        blob = torch.load(path, weights_only=True)
        judge = RotationJudge(**blob["config"])
        judge.load_state_dict(blob["state"])
        return judge.eval(), True
    judge = train_rotation_judge(images, steps=steps)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": judge.config, "state": judge.state_dict()}, path)
    return judge, False


# ------------------------------------------------------------------ main
def cat_rows(a, work: Path, width: list[str], out_dir: Path, tag: str) -> dict:
    """Items 3 and 4: the cat models of ``--models``, scored; the table's rows."""
    dirs = split_folders(work, a.quick)
    shards = {k: shard(d, work / f"shards_{k}{'_quick' if a.quick else ''}") for k, d in dirs.items()}
    test, judge_set, train = load(shards["test"]), load(shards["judge"]), load(shards["train"])
    small = load(shards["small"])
    num = a.num or len(test)
    cpu0 = time.process_time()
    judge, cached = judge_for(judge_set, a.judge_steps, OUT_DIR / "cache")
    from wgan_dist.metrics.photo import rotation_accuracy

    floor_set = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:len(test)]]
    score = Scorer(judge, test, train, floor_set)
    real = {"rotation_acc": rotation_accuracy(judge, test), "judge_cached": cached,
            "judge_cpu_s": time.process_time() - cpu0, **score.real,
            "counts": {k: len(v) for k, v in (("test", test), ("judge", judge_set), ("train", train),
                                             ("small", small))}}
    print(f"real test photos: judge rotation accuracy {real['rotation_acc']:.3f}; Frechet floor "
          f"{real['frechet_floor']:.3f}; Haar rate {real['haar']:.3f} (training photos "
          f"{real['haar_train']:.3f}); SWD floor {real['swd_floor']:.1f}", flush=True)
    grid(test, out_dir / "real.png")

    rows: dict[str, dict] = {}

    def add(label: str, fake: torch.Tensor, kimg: float, cpu_s: float, png: str | None,
            train_set: torch.Tensor | None = None, **extra) -> None:
        rows[label] = {"kimg": kimg, "cpu_s": cpu_s, **score(fake, train_set), **extra}
        r = rows[label]
        print(f"{label:<34} kimg {kimg:6.1f}  CPU s {cpu_s:6.0f}  Frechet {r['frechet']:.3f} "
              f"({r['frechet_x']:.1f}x)  Haar {r['haar']:.3f} ({r['haar_x']:.2f}x)  SWD {r['swd']:.1f}  "
              f"NN pix {r['nn_pix_ratio']:.2f} feat {r['nn_feat_ratio']:.2f} close "
              f"{r['nn_pix_close']:.3f}/{r['nn_feat_close']:.3f}", flush=True)
        if png:
            grid(fake, out_dir / png)

    ours: list[dict] = []
    if "ours" in a.models:
        ours = train_ours(a.preset, shards["train"], work / f"run_ours{tag}", a.kimg, [*width, *a.set],
                          out_dir / "ours.log", a.reuse, cpu_budget_s=a.cpu_min * 60)
        last = ours[-1]
        add("ours", ours_samples(last["path"], num), last["kimg"], last["cpu_s"], "ours.png",
            preset=a.preset, overrides=[*width, *a.set])
        if a.trajectory:  # is it still improving when the budget ends?
            for c in ours[:-1]:
                add(f"ours at {c['kimg']:.1f} kimg", ours_samples(c["path"], num), c["kimg"], c["cpu_s"], None)
    for name in ("small", "small_noaug"):
        if name in a.models:
            extra = ["data.diffaug="] if name == "small_noaug" else []
            runs = train_ours("small_data64", shards["small"], work / f"run_{name}{tag}", a.small_kimg,
                              [*width, *a.set, *extra], out_dir / f"{name}.log", a.reuse,
                              cpu_budget_s=a.cpu_min * 60)
            add(name, ours_samples(runs[-1]["path"], num), runs[-1]["kimg"], runs[-1]["cpu_s"],
                f"{name}.png", train_set=small, overrides=[*width, *a.set, *extra])
            grid(small, out_dir / "real_small.png")

    import _ref64

    for arch in ("dcgan", "resnet"):
        if f"ref_{arch}" not in a.models:
            continue
        t0 = time.process_time()
        # Equal CPU time needs no more than ours used (when ours ran); never more than --cpu-min.
        budget = min(a.cpu_min * 60, ours[-1]["cpu_s"] * 1.02) if ours else a.cpu_min * 60
        if arch == "resnet" and a.resnet_cpu_min:
            budget = a.resnet_cpu_min * 60
        saved = work / f"ref_{arch}{tag}.pt"
        key = [arch, a.kimg, round(budget / 60), len(train)]
        if a.reuse and saved.is_file() and torch.load(saved, weights_only=True)["key"] == key:
            snaps = torch.load(saved, weights_only=True)["snaps"]
            print(f"  reusing the reference {arch} snapshots in {saved}", flush=True)
        else:
            snaps = _ref64.train_reference(arch, train, a.kimg, budget)
            torch.save({"key": key, "snaps": snaps}, saved)
        print(f"  reference {arch}: {snaps[-1]['kimg']:.1f} kimg in {time.process_time() - t0:.0f} CPU s",
              flush=True)
        last = snaps[-1]
        equal_cpu = bool(ours) and last["cpu_s"] >= 0.95 * ours[-1]["cpu_s"]
        add(f"reference {arch}" + (", equal CPU time" if equal_cpu else ""),
            _ref64.generate(arch, last["state"], num), last["kimg"], last["cpu_s"], f"ref_{arch}.png")
        if ours and not equal_cpu:  # a shorter reference run: ours at its CPU time
            mine = min(ours, key=lambda c: abs(c["cpu_s"] - last["cpu_s"]))
            add(f"ours at the CPU time of reference {arch}", ours_samples(mine["path"], num),
                mine["kimg"], mine["cpu_s"], None)
        if ours:
            mine = min(ours, key=lambda c: abs(c["kimg"] - last["kimg"]))
            near = abs(mine["kimg"] - last["kimg"]) <= 0.1 * last["kimg"]
            add(f"ours at the kimg of reference {arch}" if near else
                f"ours' first kept checkpoint (reference {arch} saw fewer images)",
                ours_samples(mine["path"], num), mine["kimg"], mine["cpu_s"], None)

    head = ("| model | kimg | CPU s | Frechet (x floor) | Haar rate (x real) | SWD | "
            "NN ratio pix / feat | closer than 5 % of real, pix / feat |")
    lines = [head, "|---|---|---|---|---|---|---|---|",
             f"| real test photos | | | floor {real['frechet_floor']:.3f} | {real['haar']:.3f} | "
             f"floor {real['swd_floor']:.1f} | 1 | 0.05 |"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['kimg']:.1f} | {r['cpu_s']:.0f} | {r['frechet']:.3f} "
                     f"({r['frechet_x']:.1f}x) | {r['haar']:.3f} ({r['haar_x']:.2f}x) | {r['swd']:.1f} | "
                     f"{r['nn_pix_ratio']:.2f} / {r['nn_feat_ratio']:.2f} | "
                     f"{r['nn_pix_close']:.3f} / {r['nn_feat_close']:.3f} |")
    print("\n".join(lines), flush=True)
    return {"real": real, "rows": rows, "ours_checkpoints": ours, "table": lines}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: 3 kimg / 60 CPU s a model, "
                    "fewer photos, a 150-step judge")
    ap.add_argument("--kimg", type=float, default=96.0, help="real images through each critic (ours, refs)")
    ap.add_argument("--cpu-min", type=float, default=30.0, help="CPU minutes a model may use (ours and "
                    "the small-data models are stopped there with Ctrl-C; the references get ours' CPU time)")
    ap.add_argument("--resnet-cpu-min", type=float, default=0.0, help="CPU minutes of the reference "
                    "ResNet (0: ours' CPU time); it costs ~48x ours per image")
    ap.add_argument("--small-kimg", type=float, default=96.0, help="kimg of the small-data models")
    ap.add_argument("--width", type=int, default=32, help="model.g_width / d_width of ours")
    ap.add_argument("--num", type=int, default=0, help="samples scored (default: as many as test photos)")
    ap.add_argument("--judge-steps", type=int, default=1000, help="training steps of the rotation judge")
    ap.add_argument("--models", nargs="+", default=["ours", "ref_dcgan", "ref_resnet"],
                    choices=("ours", "ref_dcgan", "ref_resnet", "small", "small_noaug", "cond"))
    ap.add_argument("--cond-kimg", type=float, default=64.0, help="kimg of the conditional model (cond)")
    ap.add_argument("--clf-steps", type=int, default=600, help="training steps of the sign-digit classifier")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra overrides for ours and the small-data models (a recipe under trial)")
    ap.add_argument("--preset", default="celeba64", help="ours' preset")
    ap.add_argument("--tag", default="", help="suffix of the output names")
    ap.add_argument("--trajectory", action="store_true", help="also score every kept checkpoint of ours")
    ap.add_argument("--work", type=Path, default=None, help="keep data and runs here (default: a temp dir)")
    ap.add_argument("--reuse", action="store_true", help="with --work: read back a finished run of "
                    "the same command instead of training it again")
    a = ap.parse_args()
    if a.quick:
        a.kimg, a.small_kimg, a.cond_kimg, a.cpu_min, a.judge_steps, a.clf_steps = 3.0, 3.0, 3.0, 1.0, 150, 100
    torch.set_num_threads(1)
    tag = ("_" + a.tag if a.tag else "") + ("_quick" if a.quick else "")
    out_dir = OUT_DIR / f"photos{tag}"
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.TemporaryDirectory(prefix="bench_photos-") if a.work is None else None
    work = Path(tmp.name) if tmp else a.work
    t_start = time.time()
    width = [f"model.g_width={a.width}", f"model.d_width={a.width}"]
    result = {}
    if set(a.models) - {"cond"}:
        result["cats"] = cat_rows(a, work, width, out_dir, tag)
    if "cond" in a.models:
        result["signs"] = conditional_rows(a, work, width, out_dir, tag)
    print(f"(wall {time.time() - t_start:.0f} s)")
    write_result("bench_photos" + tag, {"args": {**vars(a), "work": str(a.work)}, **result,
                                        "grids": str(out_dir)})
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
