"""Images/s of the WebDataset reading pipeline against its bound and against ImageFolder.

    python benchmarks/bench_loader.py            # 28, 64, 128 px; 1 and 2 workers; ~8 min
    python benchmarks/bench_loader.py --quick    # 1000 images a set, 2 rounds of 1.5 s cases; ~4 min
    python benchmarks/bench_loader.py --against c73da1a --resolutions 64 128 --quick
                                                 # today's loader against an earlier revision's

On the built-in sketches. For real photos (AFHQ cats, jpeg / png / raw at 64 and 128 px), every
input path beside its bound (streaming with 1 and 2 workers, the memory and device caches,
JPEG bytes decoded per batch) and how many cores one GPU needs for each: bench_input.py.

For each resolution (28 px grayscale like QuickDraw, 64 and 128 px RGB like CelebA) the
built-in sketches are written as shard sets (png and raw uint8) and, with the very same PNG
bytes, as an image folder. Each round measures, interleaved:

- bound:        the same encoded bytes decoded in a tight loop by ``data.pipeline.DecodeSample`` (our
                decoder), in W processes at once, no pipeline: what W cores can decode;
- pipeline:     ``data.pipeline.make_loader`` with W workers (tar reading, shuffle buffer, flips,
                decode, batching, the hand-over to the training process);
- ImageFolder:  torchvision ``ImageFolder`` + ``DataLoader`` (W workers, shuffle, batch 64)
                over the PNG files, decoded by PIL to the same uint8 tensors.

Ratios are medians of per-round ratios (both sides of a round share the machine's load).
Rates exclude worker start-up: the clock starts at the first batch. Then the resident memory
of the training process plus its workers is sampled while one loader reads the set many times
over (resampled), to show it stays flat.
"""
from __future__ import annotations

import argparse
import gc
import io
import json
import math
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

from _common import OUT_DIR, cpu_seconds, interleave, median, paired_ratio, spread, write_result

import numpy as np  # noqa: E402
import torch  # noqa: E402  (after _common put the repo on sys.path)

from wgan_dist.data import pipeline as data  # noqa: E402
from wgan_dist.data.write import write_shards  # noqa: E402

BATCH = 64
DATA_DIR = OUT_DIR / "data"
CHANNELS = {28: 1, 64: 3, 128: 3}


# ---------------------------------------------------------------------------------- data sets
def shard_set(res: int, enc: str, per_class: int) -> Path:
    """The built-in sketches at ``res`` px in ``enc`` encoding, written once and reused."""
    ch = CHANNELS[res]
    out = DATA_DIR / f"builtin-{res}px-c{ch}-{enc}-{per_class}"
    if not (out / "manifest.json").is_file():
        print(f"writing {out.relative_to(OUT_DIR.parent.parent)} (once) ...", flush=True)
        write_shards(["builtin"], str(out), kind="builtin", resolution=res, channels=ch,
                     encoding=enc, per_shard=max(50, per_class), builtin_per_class=per_class,
                     workers=2, overwrite=True, progress=False)
    return out


def urls_of(shard_dir: Path) -> list[str]:
    m = json.loads((shard_dir / "manifest.json").read_text())
    return [str(shard_dir / s["name"]) for s in m["shards"]]


def image_folder(png_dir: Path) -> Path:
    """The PNG shard set's samples as files, class/key.png: the same bytes ImageFolder reads."""
    out = png_dir.with_name(png_dir.name.replace("-png-", "-folder-"))
    if not (out / ".complete").is_file():
        for s in data.ReadTar()(iter({"url": u} for u in urls_of(png_dir))):
            cls = out / f"class{int(s['cls']):02d}"
            cls.mkdir(parents=True, exist_ok=True)
            (cls / f"{s['__key__']}.png").write_bytes(s["png"])
        (out / ".complete").write_text("")
    return out


# ----------------------------------------------------------------------------------- measures
# Each measure returns {"img_s": wall-clock images/s, "img_cpu_s": images per CPU-second}.
# CPU seconds count this process and its (joined) children: workers included. On a shared
# machine the wall rate follows the load; the CPU rate is the pipeline's cost per image.

def _decode_worker(samples: list, res: int, ch: int, seconds: float, barrier, queue) -> None:
    torch.set_num_threads(1)
    batch = np.empty((BATCH, res, res, ch), dtype=np.uint8)
    barrier.wait()
    n, t_end = 0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        for i, s in enumerate(samples[n % len(samples): n % len(samples) + BATCH]):
            batch[i] = data.decode_sample(s, res, ch)
            n += 1
    queue.put(n)


def bound_rate(samples: list, res: int, workers: int, seconds: float) -> dict:
    """What ``workers`` processes decoding into a batch in a tight loop reach (forked, as the
    DataLoader's workers are): ``data.pipeline.decode_sample`` and the copy into the batch,
    nothing else (for raw entries the copy is all there is)."""
    ctx = mp.get_context("fork")
    barrier, queue = ctx.Barrier(workers + 1), ctx.Queue()
    procs = [ctx.Process(target=_decode_worker, args=(samples, res, CHANNELS[res], seconds, barrier, queue))
             for _ in range(workers)]
    cpu0 = cpu_seconds()
    for p in procs:
        p.start()
    barrier.wait()
    counts = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return {"img_s": sum(counts) / seconds, "img_cpu_s": sum(counts) / (cpu_seconds() - cpu0)}


def loader_rate(make_iter, batches: int, shutdown=None) -> dict:
    """Images/s from the first batch on (worker start-up excluded from the wall clock; the
    CPU count includes it, a few ms against seconds)."""
    cpu0 = cpu_seconds()
    it = make_iter()
    first = next(it)[0].shape[0]
    n, t0 = 0, time.perf_counter()
    for i, (images, _labels) in enumerate(it):
        n += images.shape[0]
        if i + 2 >= batches:
            break
    wall = time.perf_counter() - t0
    close = getattr(it, "close", None)
    if close is not None:
        close()
    del it
    if shutdown is not None:
        shutdown()
    gc.collect()  # the DataLoader iterator joins its workers when it goes
    return {"img_s": n / wall, "img_cpu_s": (n + first) / (cpu_seconds() - cpu0)}


def pipeline_rate(urls: list[str], res: int, workers: int, batches: int,
                  fast_tar: bool = True, module=None) -> dict:
    loader = (module or data).make_loader(urls, rank=0, world=1, seed=0, batch_size=BATCH, resolution=res,
                              channels=CHANNELS[res], num_batches=batches, workers=workers,
                              shuffle_buffer=1000, fast_tar=fast_tar)
    return loader_rate(lambda: iter(loader), batches)


class PILLoader:
    """ImageFolder's loader, decoding to the mode our decoder uses (L or RGB)."""

    def __init__(self, mode: str) -> None:
        self.mode = mode

    def __call__(self, path: str):
        from PIL import Image

        with open(path, "rb") as f:
            img = Image.open(io.BytesIO(f.read()))
            return img.convert(self.mode) if img.mode != self.mode else img.copy()


def folder_rate(root: Path, res: int, workers: int, batches: int) -> float:
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import PILToTensor

    ds = ImageFolder(str(root), loader=PILLoader("L" if CHANNELS[res] == 1 else "RGB"),
                     transform=PILToTensor())
    # Enough epochs of the folder for ``batches`` batches: a fresh shuffled pass each time.
    loader = torch.utils.data.DataLoader(ds, batch_size=BATCH, shuffle=True, drop_last=True,
                                         num_workers=workers, prefetch_factor=4,
                                         persistent_workers=True)  # no respawn per pass: its best case

    def forever():
        while True:
            yield from loader
    def shutdown():  # persistent workers outlive the pass: join them before counting CPU
        loader._iterator = None
    return loader_rate(forever, batches, shutdown)


def stage_costs(urls: list[str], res: int, images: int, repeats: int) -> dict[str, float]:
    """CPU microseconds per image of the pipeline's stages, run in this process (no workers):
    each row adds a stage to the one before; the first row is webdataset's own tar reader,
    for comparison. Medians of ``repeats`` interleaved rounds."""
    import webdataset as wds

    read = [data.ShardStream(urls, 0, 1, 0), data.ReadTar()]
    mid = [data.Shuffle(1000, 0, 0), data.DrawFlips(True, 0, 0), data.SkipConsumed(0, BATCH)]
    batch = [wds.batched(BATCH, collation_fn=None, partial=False)]
    decode = [data.DecodeBatch(res, CHANNELS[res])]
    rows = {"tar read, webdataset's reader": [data.ShardStream(urls, 0, 1, 0), wds.tarfile_to_samples()],
            "tar read (ReadTar)": read, "+ shuffle, flip coins, resume skip": read + mid,
            "+ batch (lists of samples)": read + mid + batch,
            "+ decode into the batch (DecodeBatch)": read + mid + batch + decode}

    def cost(stages: list) -> float:
        it = iter(wds.DataPipeline(*stages))
        per_item = BATCH if stages[-1] in (batch[0], decode[0]) else 1
        next(it)
        c0 = time.process_time()
        for _ in range(images // per_item):
            next(it)
        return (time.process_time() - c0) / images * 1e6
    runs = interleave({k: (lambda st=st: cost(st)) for k, st in rows.items()}, repeats,
                      log=lambda line: None)
    return {k: median(v) for k, v in runs.items()}


def memcpy_rate(res: int, seconds: float = 0.5) -> float:
    """Images/s of a plain memory copy of uint8 images (the floor raw storage could reach)."""
    n_img = 256
    src = torch.empty(n_img, CHANNELS[res], res, res, dtype=torch.uint8)
    dst = torch.empty_like(src)
    n, t_end = 0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        dst.copy_(src)
        n += n_img
    return n / seconds


# ---------------------------------------------------------------------------------- memory
def rss_mb() -> dict[str, float]:
    """Resident memory of this process and its children: RSS summed (counts shared pages
    once per process) and PSS summed (shared pages split, the honest total) when available."""
    try:
        import psutil

        procs = [psutil.Process()] + psutil.Process().children(recursive=True)
        rss = pss = 0.0
        for p in procs:
            try:
                full = p.memory_full_info()
                rss += full.rss
                pss += getattr(full, "pss", full.rss)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return {"rss_mb": rss / 2**20, "pss_mb": pss / 2**20, "processes": len(procs)}
    except ImportError:
        pids = [os.getpid()]
        for p in Path("/proc").iterdir():  # children by parent pid
            try:
                if p.name.isdigit() and (p / "stat").read_text().split()[3] == str(os.getpid()):
                    pids.append(int(p.name))
            except OSError:
                pass
        rss = 0.0
        for pid in pids:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) * 1024
        return {"rss_mb": rss / 2**20, "pss_mb": float("nan"), "processes": len(pids)}


def memory_over_epochs(urls: list[str], res: int, total: int, epochs: int, workers: int) -> dict:
    """One loader reading the set ``epochs`` times over (resampled); memory after every pass,
    taken mid-run so the workers are alive."""
    per_epoch = max(1, total // BATCH)
    loader = data.make_loader(urls, rank=0, world=1, seed=0, batch_size=BATCH, resolution=res,
                              channels=CHANNELS[res], num_batches=per_epoch * epochs + per_epoch // 2,
                              workers=workers, shuffle_buffer=2000)
    samples = []
    for i, _batch in enumerate(loader):
        if (i + 1) % per_epoch == 0 and len(samples) < epochs:
            samples.append(rss_mb())
    rss = [s["rss_mb"] for s in samples]
    pss = [s["pss_mb"] for s in samples]
    return {"resolution": res, "workers": workers, "epochs": len(samples),
            "images_per_epoch": per_epoch * BATCH, "processes": samples[-1]["processes"],
            "rss_mb_per_epoch": [round(x, 1) for x in rss], "pss_mb_per_epoch": [round(x, 1) for x in pss],
            "rss_first_mb": rss[0], "rss_peak_mb": max(rss), "rss_last_mb": rss[-1],
            "rss_growth_first_to_last": rss[-1] / rss[0] - 1,
            "pss_growth_first_to_last": pss[-1] / pss[0] - 1}


# ---------------------------------------------------------------------------------- reader
def bench_reader(per_class: int, repeats: int, seconds: float) -> dict:
    """Images/s into the training process at 28 px (png, 1 worker, the whole pipeline) with
    the format module's mmap tar reader against webdataset's ``tarfile_to_samples``: the
    figure that decides whether our reader stays (it must be >= 1.5x)."""
    urls = urls_of(shard_set(28, "png", per_class))
    nb = max(20, math.ceil(4000 * seconds / BATCH))
    runs = interleave({"mmap": lambda: pipeline_rate(urls, 28, 1, nb, True),
                       "webdataset": lambda: pipeline_rate(urls, 28, 1, nb, False)}, repeats)
    out = {}
    for unit in ("img_s", "img_cpu_s"):
        a, b = [r[unit] for r in runs["mmap"]], [r[unit] for r in runs["webdataset"]]
        out.update({f"mmap_{unit}": median(a), f"webdataset_{unit}": median(b),
                    f"ratio_{unit}": paired_ratio(a, b)})
    print(f"tar reader, 28 px png, 1 worker, images/s into the trainer: mmap {out['mmap_img_s']:.0f}, "
          f"webdataset {out['webdataset_img_s']:.0f}; ratio mmap/webdataset {out['ratio_img_s']:.2f} "
          f"wall, {out['ratio_img_cpu_s']:.2f} per CPU-second")
    return out


# ---------------------------------------------------------------------------------- against
def pipeline_at(rev: str):
    """``wgan_dist/data/pipeline.py`` as it was at git revision ``rev``, imported beside today's
    as a module of ``wgan_dist.data`` (for its relative imports) from a temporary file."""
    import importlib.util
    import subprocess
    import tempfile

    src = subprocess.run(["git", "show", f"{rev}:wgan_dist/data/pipeline.py"], cwd=OUT_DIR.parent.parent,
                         capture_output=True, text=True, check=True).stdout
    name = f"wgan_dist.data._pipeline_{rev.replace('~', '_').replace('^', '_')}"
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(src)
    try:
        spec = importlib.util.spec_from_file_location(name, f.name)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # picklable stages for the loader workers
        spec.loader.exec_module(module)
        return module
    finally:
        Path(f.name).unlink()


def bench_against(rev: str, per_class: int, resolutions: list[int], workers: list[int],
                  repeats: int, seconds: float) -> list[dict]:
    """Today's loader against the one at ``rev``, interleaved: CPU us per image (all processes)
    and wall images/s, png and raw, per resolution and worker count."""
    then = pipeline_at(rev)
    rows = []
    for res in resolutions:
        cases = {}
        for enc in ("png", "raw"):
            urls = urls_of(shard_set(res, enc, per_class))
            for w in workers:
                nb = max(20, math.ceil((15000 if enc == "raw" else 3000) * w * seconds / BATCH))
                for who, mod in (("now", data), (rev, then)):
                    cases[f"{enc} W{w} {who}"] = (lambda u=urls, w=w, nb=nb, m=mod: pipeline_rate(
                        u, res, w, nb, module=m))
        print(f"\n{res} px, today's loader against {rev}; wall img/s per round:")
        runs = interleave(cases, repeats)
        for enc in ("png", "raw"):
            for w in workers:
                now, old = runs[f"{enc} W{w} now"], runs[f"{enc} W{w} {rev}"]
                rows.append({"resolution": res, "encoding": enc, "workers": w, "against": rev,
                             "now_cpu_us": median([1e6 / r["img_cpu_s"] for r in now]),
                             "then_cpu_us": median([1e6 / r["img_cpu_s"] for r in old]),
                             "now_img_s": median([r["img_s"] for r in now]),
                             "then_img_s": median([r["img_s"] for r in old]),
                             "speedup_cpu": paired_ratio([r["img_cpu_s"] for r in now], [r["img_cpu_s"] for r in old]),
                             "speedup_wall": paired_ratio([r["img_s"] for r in now], [r["img_s"] for r in old])})
    print(f"\n{'px':>4} {'enc':>4} {'W':>2} | CPU us/img now {rev:>8} | img/s now {rev:>8} | speed-up CPU  wall")
    for r in rows:
        print(f"{r['resolution']:>4} {r['encoding']:>4} {r['workers']:>2} | {r['now_cpu_us']:14.1f} "
              f"{r['then_cpu_us']:8.1f} | {r['now_img_s']:9.0f} {r['then_img_s']:8.0f} | "
              f"{r['speedup_cpu']:11.2f} {r['speedup_wall']:5.2f}")
    return rows


# ---------------------------------------------------------------------------------- main
def bench_resolution(res: int, per_class: int, workers_list: list[int], repeats: int,
                     seconds: float) -> list[dict]:
    png, raw = shard_set(res, "png", per_class), shard_set(res, "raw", per_class)
    folder = image_folder(png)
    urls = {"png": urls_of(png), "raw": urls_of(raw)}
    samples = {enc: list(data.ReadTar()(iter({"url": u} for u in urls[enc]))) for enc in urls}
    # Size each pipeline run from a short decode rate: about `seconds` of reading.
    guess = {enc: bound_rate(samples[enc], res, 1, 0.3)["img_s"] for enc in urls}
    cases = {}
    for w in workers_list:
        for enc in ("png", "raw"):
            nb = max(20, math.ceil(min(guess[enc], 15000) * w * seconds / BATCH))
            cases[f"bound_{enc}_w{w}"] = (lambda s=samples[enc], w=w: bound_rate(s, res, w, seconds))
            cases[f"pipeline_{enc}_w{w}"] = (lambda u=urls[enc], w=w, nb=nb: pipeline_rate(u, res, w, nb))
        nb = max(20, math.ceil(guess["png"] * w * seconds / BATCH))
        cases[f"folder_png_w{w}"] = (lambda w=w, nb=nb: folder_rate(folder, res, w, nb))
    print(f"\n{res} px, {CHANNELS[res]} channel(s), {len(samples['png'])} images; wall img/s per round:")
    runs = interleave(cases, repeats)
    copy = memcpy_rate(res)
    rows = []
    for w in workers_list:
        for enc in ("png", "raw"):
            row = {"resolution": res, "channels": CHANNELS[res], "encoding": enc, "workers": w,
                   "memcpy_img_s": copy if enc == "raw" else None}
            for unit in ("img_s", "img_cpu_s"):
                pipe = [r[unit] for r in runs[f"pipeline_{enc}_w{w}"]]
                bound = [r[unit] for r in runs[f"bound_{enc}_w{w}"]]
                folder_runs = [r[unit] for r in runs[f"folder_png_w{w}"]]
                row.update({
                    f"pipeline_{unit}": median(pipe), f"bound_{unit}": median(bound),
                    f"imagefolder_png_{unit}": median(folder_runs),
                    f"pipeline_over_bound_{unit}": paired_ratio(pipe, bound),
                    f"pipeline_over_imagefolder_{unit}": paired_ratio(pipe, folder_runs),
                    f"spread_pipeline_{unit}": spread(pipe), f"spread_bound_{unit}": spread(bound),
                })
            row["runs"] = {k: runs[f"{k}_{enc}_w{w}" if k != "folder" else f"folder_png_w{w}"]
                           for k in ("pipeline", "bound", "folder")}
            rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1000 images a set, 2 rounds of ~1.5 s")
    p.add_argument("--resolutions", type=int, nargs="+", default=[28, 64, 128])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 3)")
    p.add_argument("--reader-only", action="store_true",
                   help="only the tar reader comparison (mmap vs webdataset, 28 px)")
    p.add_argument("--against", metavar="REV",
                   help="only today's loader against data/pipeline.py at git revision REV")
    a = p.parse_args()
    per_class = 125 if a.quick else 250  # 8 classes
    repeats = a.repeats or (2 if a.quick else 3)
    seconds = 1.5 if a.quick else 2.0
    torch.set_num_threads(1)  # the training process does little here; keep it off the workers' cores
    if a.against:
        rows = bench_against(a.against, per_class, a.resolutions, a.workers, repeats, seconds)
        write_result("bench_loader_against", {"against": a.against, "repeats": repeats, "rows": rows})
        return
    print("tar reader: mmap scanner vs webdataset's, end to end at 28 px ...", flush=True)
    reader = bench_reader(per_class, max(repeats, 3), seconds)
    if a.reader_only:
        write_result("bench_loader_reader", reader)
        return
    rows = []
    for res in a.resolutions:
        rows += bench_resolution(res, per_class, a.workers, repeats, seconds)
    print("\nstage costs, CPU us per image in one process ...")
    stages = {f"{res} {enc}": stage_costs(urls_of(shard_set(res, enc, per_class)), res, 2000, repeats)
              for res in a.resolutions for enc in ("png", "raw")}
    for key, costs in stages.items():  # what the hand-over to the training process adds
        res, enc = key.split()
        w1 = next(r for r in rows if r["resolution"] == int(res) and r["encoding"] == enc and r["workers"] == 1)
        costs["1 worker, all processes (rounds above)"] = 1e6 / w1["pipeline_img_cpu_s"]
        costs["bound: decode into a batch (rounds above)"] = 1e6 / w1["bound_img_cpu_s"]
    mem_res = 64 if 64 in a.resolutions else a.resolutions[0]
    epochs = 8 if a.quick else 12
    print(f"\nmemory: one loader, {mem_res} px png, 2 workers, {epochs} passes over the set ...")
    mem = memory_over_epochs(urls_of(shard_set(mem_res, "png", per_class)), mem_res,
                             8 * per_class, epochs, max(a.workers))

    print(f"\n{'res':>4} {'enc':>4} {'W':>2} | {'pipeline':>8} {'bound':>8} {'IFolder':>8} "
          f"{'pipe/bd':>7} {'pipe/IF':>7} | {'pipeline':>8} {'bound':>8} {'IFolder':>8} {'pipe/bd':>7} "
          f"{'pipe/IF':>7}")
    print(f"{'':>13}| {'wall-clock images/s (median of rounds)':<42}| images per CPU-second (all processes)")
    for r in rows:
        cells = []
        for u in ("img_s", "img_cpu_s"):
            cells.append(f"{r[f'pipeline_{u}']:8.0f} {r[f'bound_{u}']:8.0f} {r[f'imagefolder_png_{u}']:8.0f} "
                         f"{r[f'pipeline_over_bound_{u}']:7.2f} {r[f'pipeline_over_imagefolder_{u}']:7.2f}")
        print(f"{r['resolution']:>4} {r['encoding']:>4} {r['workers']:>2} | " + " | ".join(cells)
              + (f"   (memcpy {r['memcpy_img_s']:.3g} img/s)" if r["memcpy_img_s"] else ""))
    print(f"memory, {mem['processes']} processes, per pass (MB): RSS {mem['rss_mb_per_epoch']}")
    print(f"  PSS {mem['pss_mb_per_epoch']}")
    print(f"  RSS first {mem['rss_first_mb']:.0f}, peak {mem['rss_peak_mb']:.0f}, last "
          f"{mem['rss_last_mb']:.0f} ({mem['rss_growth_first_to_last']:+.1%}); "
          f"PSS {mem['pss_growth_first_to_last']:+.1%}")
    print(f"CPU us per image (px encoding): {'':<25}" + "".join(f"{key:>12}" for key in stages))
    for k in next(iter(stages.values())):
        print(f"  {k:<55}" + "".join(f"{stages[key][k]:12.1f}" for key in stages))
    write_result("bench_loader", {"quick": a.quick, "repeats": repeats, "seconds_per_case": seconds,
                                  "batch": BATCH, "rows": rows, "stage_cpu_us_per_image": stages,
                                  "memory": mem, "reader": reader})


if __name__ == "__main__":
    main()
