"""What feeds a GPU: every input path on real photos, each beside its bound, and how many CPU
cores per GPU each path needs.

    python benchmarks/bench_input.py           # 2,000 AFHQ cats, 64 and 128 px; ~15 min
    python benchmarks/bench_input.py --quick   # 1,000 cats, 2 rounds; ~6 min
    python benchmarks/bench_input.py --quick --stages   # where a streamed raw image goes; ~1 min

The cat faces of ../shared/data/afhq_cat are written as shard sets in jpeg (quality 95), png
and raw uint8 at 64 and 128 px. For each, interleaved rounds measure images/s (wall) and CPU
microseconds per image (this process and its children):

- stream W: ``data.pipeline.make_loader`` with W loader workers (W = 1, 2): tar reading,
  shuffle, decode, batching, the hand-over to the training process (no flips, as
  bench_loader); its bound is our decoder on the same bytes, decoding into a batch in a tight
  loop in W processes (``bench_loader.bound_rate``); for raw pixels that is a copy of each
  image's bytes into the batch: the memcpy bound of raw storage (a block copy of 256 images,
  ``memcpy``, is printed beside it: cache-resident at 64 px, it is no bound for images read
  from a set);
- cache memory (= device on a CPU): ``data.cache.CachedBatches`` over an ``ImageCache``
  holding the decoded pixels: a seeded gather of a batch and its flips, no loader (and the
  same without flips); its bound is the gather alone (``index_select`` of a batch);
- cache encoded (jpeg): the JPEG bytes held, each batch decoded by
  ``torchvision.io.decode_jpeg``; its bound is ``decode_jpeg`` of the same batches in a tight
  loop (on a GPU this is nvjpeg and costs the host almost nothing: gpu_check.sh measures it).

Then, from the counted FLOPs of the celeba64 / celeba128 presets (benchmarks/_flops.py) at the
scaling model's utilisation (35 % of an H100's 989 TFLOP/s bf16), the images/s one GPU eats
(``gpu demand <px> <images/s>``), and for every path the cores one GPU needs to be fed
(``cores per GPU <path> <px> <n>`` = demand x CPU seconds per image). A typical 8-GPU node
has 8-16 cores per GPU. Writes benchmarks/out/bench_input.json.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from _common import OUT_DIR, REPO, cpu_seconds, interleave, machine, median, write_result

import torch  # noqa: E402

from bench_loader import bound_rate, loader_rate, pipeline_rate, stage_costs  # noqa: E402
from wgan_dist.data import cache  # noqa: E402
from wgan_dist.data.format import iter_samples  # noqa: E402
from wgan_dist.data.shardset import resolve_shards  # noqa: E402
from wgan_dist.data.write import write_shards  # noqa: E402

CATS = REPO.parent / "shared" / "data" / "afhq_cat" / "cat"
BATCH = 64
PEAK, MFU = 989e12, 0.35  # as benchmarks/scaling_model.py
PRESETS = {64: "celeba64", 128: "celeba128"}


def shard_set(res: int, enc: str, n: int) -> Path:
    out = OUT_DIR / "data" / f"afhq-{res}px-{enc}-{n}"
    if not (out / "manifest.json").is_file():
        print(f"writing {out.relative_to(REPO)} (once) ...", flush=True)
        write_shards([str(CATS)], str(out), resolution=res, channels=3, encoding=enc,
                     per_shard=500, limit=n, workers=2, overwrite=True, progress=False)
    return out


def _rate(batches, count: int) -> dict:
    """Images/s and images per CPU-second of ``count`` batches from an iterator."""
    it = iter(batches)
    next(it)
    c0, t0, n = cpu_seconds(), time.perf_counter(), 0
    for _ in range(count):
        images, _labels = next(it)
        n += images.shape[0]
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    return {"img_s": n / wall, "img_cpu_s": n / max(cpu, 1e-9)}


def cache_rate(held: cache.ImageCache, total: int, count: int, hflip: bool = True) -> dict:
    return _rate(cache.CachedBatches(held, seed=0, rank=0, world=1, total=total, batch_size=BATCH,
                                     skip=0, count=count + 1, hflip=hflip), count)


def gather_rate(held: cache.ImageCache, count: int) -> dict:
    """The bound of the pixel cache: gathering batches, nothing else."""
    g = torch.Generator().manual_seed(0)
    idx = [torch.randint(len(held), (BATCH,), generator=g) for _ in range(count + 1)]
    return _rate(((held.images.index_select(0, i), None) for i in idx), count)


def jpeg_bound(held: cache.ImageCache, count: int) -> dict:
    """``decode_jpeg`` of batches of the same bytes in a tight loop."""
    from torchvision.io import ImageReadMode, decode_jpeg

    chunks = [held.bytes[a:b] for a, b in held.spans]

    def batches():
        k = 0
        while True:
            sel = [chunks[(k * BATCH + j) % len(chunks)] for j in range(BATCH)]
            yield torch.stack(decode_jpeg(sel, mode=ImageReadMode.RGB)), None
            k += 1
    return _rate(batches(), count)


def memcpy_rate(res: int, seconds: float = 0.5) -> dict:
    src = torch.empty(256, 3, res, res, dtype=torch.uint8)
    dst = torch.empty_like(src)
    c0, t_end, n = cpu_seconds(), time.perf_counter() + seconds, 0
    while time.perf_counter() < t_end:
        dst.copy_(src)
        n += 256
    return {"img_s": n / seconds, "img_cpu_s": n / max(cpu_seconds() - c0, 1e-9)}


def gpu_demand(res: int) -> float:
    """Real images/s one GPU consumes at the scaling model's utilisation."""
    from _flops import flops_per_image

    from wgan_dist.config import load_config

    cfg = load_config(PRESETS[res], [])
    f_critic, f_gen = flops_per_image(cfg)
    n = cfg.optim.n_critic
    # a generator step sees n_critic real batches; its cost per real image:
    return PEAK * MFU / (f_critic + f_gen / n)


def bench(res: int, n: int, repeats: int, seconds: float) -> list[dict]:
    sets = {enc: shard_set(res, enc, n) for enc in ("jpeg", "png", "raw")}
    shards = {enc: resolve_shards(str(d), res, 3) for enc, d in sets.items()}
    quiet = lambda m: None  # noqa: E731
    held = {"memory": cache.ImageCache(shards["raw"].urls, shards["raw"].expected, 0, 1, res, 3,
                                       torch.device("cpu"), "memory", quiet),
            "encoded": cache.ImageCache(shards["jpeg"].urls, shards["jpeg"].expected, 0, 1, res, 3,
                                        torch.device("cpu"), "encoded", quiet)}
    samples = {enc: [s for u in shards[enc].urls for s in iter_samples(u)] for enc in sets}
    cases, nb = {}, {}
    for enc in ("jpeg", "png", "raw"):
        for w in (1, 2):
            guess = 2000 if enc != "raw" else 15000
            nb[(enc, w)] = max(20, math.ceil(guess * w * seconds / BATCH))
            cases[f"stream {enc} W{w}"] = (lambda e=enc, w=w: pipeline_rate(
                shards[e].urls, res, w, nb[(e, w)]))
            cases[f"bound {enc} W{w}"] = (lambda e=enc, w=w: bound_rate(samples[e], res, w, seconds))
    big = max(20, math.ceil(20000 * seconds / BATCH))
    cases["cache memory"] = lambda: cache_rate(held["memory"], n, big)
    cases["cache memory, no flips"] = lambda: cache_rate(held["memory"], n, big, hflip=False)
    cases["bound memory (gather)"] = lambda: gather_rate(held["memory"], big)
    cases["cache encoded"] = lambda: cache_rate(held["encoded"], n, max(20, math.ceil(2000 * seconds / BATCH)))
    cases["bound encoded (decode_jpeg)"] = lambda: jpeg_bound(held["encoded"], max(20, math.ceil(2000 * seconds / BATCH)))
    cases["memcpy"] = lambda: memcpy_rate(res)
    print(f"\n{res} px RGB, {n} AFHQ cats; wall images/s per round:", flush=True)
    runs = interleave(cases, repeats)
    rows = []
    pairs = [(f"stream {e} W{w}", f"bound {e} W{w}") for e in ("jpeg", "png", "raw") for w in (1, 2)] + [
        ("cache memory", "bound memory (gather)"), ("cache memory, no flips", "bound memory (gather)"),
        ("cache encoded", "bound encoded (decode_jpeg)"), ("memcpy", "memcpy")]
    for path, bound in pairs:
        p, b = runs[path], runs[bound]
        row = {"px": res, "path": path, "bound": bound}
        for unit in ("img_s", "img_cpu_s"):
            row[unit] = median([r[unit] for r in p])
            row[f"bound_{unit}"] = median([r[unit] for r in b])
            row[f"over_bound_{unit}"] = median([x[unit] / y[unit] for x, y in zip(p, b)])
        row["cpu_us_per_image"] = 1e6 / row["img_cpu_s"]
        rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1,000 cats, 2 rounds")
    p.add_argument("--resolutions", type=int, nargs="+", default=[64, 128])
    p.add_argument("--stages", action="store_true", help="only where a streamed raw image's CPU "
                   "goes: the pipeline's stages added one at a time, in this process")
    a = p.parse_args()
    if not CATS.is_dir():
        raise SystemExit(f"bench_input: {CATS} is missing (see ../shared/data)")
    torch.set_num_threads(1)
    n, repeats, seconds = (1000, 2, 1.0) if a.quick else (2000, 3, 2.0)
    if a.stages:
        stages = {}
        for res in a.resolutions:
            urls = resolve_shards(str(shard_set(res, "raw", n)), res, 3).urls
            stages[res] = stage_costs(urls, res, 3 * n, repeats)
            print(f"\n{res} px raw, CPU-us per image, each row adds a stage (one process):")
            for k, v in stages[res].items():
                print(f"  {k:<40} {v:7.1f}")
        write_result("bench_input_stages", {"machine": machine(), "images": n, "stages": stages})
        return
    rows = []
    for res in a.resolutions:
        rows += bench(res, n, repeats, seconds)
    demand = {res: gpu_demand(res) for res in a.resolutions}
    print(f"\n{'px':>4} {'path':<22} {'img/s':>9} {'CPU us/img':>11} {'bound img/s':>12} "
          f"{'/bound wall':>11} {'/bound CPU':>10}")
    for r in rows:
        print(f"{r['px']:>4} {r['path']:<22} {r['img_s']:9.0f} {r['cpu_us_per_image']:11.1f} "
              f"{r['bound_img_s']:12.0f} {r['over_bound_img_s']:11.2f} {r['over_bound_img_cpu_s']:10.2f}"
              f"   ({r['bound']})")
    print()
    for res, d in demand.items():
        print(f"gpu demand {res} {d:.0f}")
    cores = {}
    for r in rows:
        if r["path"] == "memcpy":
            continue
        name = f"{r['path'].replace(' ', '-')} {r['px']}"
        cores[name] = demand[r["px"]] * r["cpu_us_per_image"] * 1e-6
        print(f"cores per GPU {name} {cores[name]:.1f}")
    print("(a typical 8-GPU node has 8-16 cores per GPU; the device cache and nvjpeg decode run on "
          "the GPU: gpu_check.sh measures them there)")
    write_result("bench_input", {"machine": machine(), "quick": a.quick, "images": n,
                                 "repeats": repeats, "rows": rows, "gpu_demand": demand,
                                 "cores_per_gpu": cores, "peak": PEAK, "mfu": MFU})


if __name__ == "__main__":
    main()
