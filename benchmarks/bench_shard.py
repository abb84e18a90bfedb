"""Shard writer throughput: images/s with 1 worker against N worker processes.

    python benchmarks/bench_shard.py            # builtin 28 px + PNG folder -> 64 px; ~1 min
    python benchmarks/bench_shard.py --quick    # 1000 images a source, 2 rounds; <1 min

Two sources, each written with ``write_shards`` (the ``python -m wgan_dist.shard`` code path)
at 1 and N workers, interleaved:

- builtin:  the built-in sketches rendered (4x supersampled) and PNG-encoded at 28 px;
- folder:   a folder of 128 px PNG files decoded, resized to 64 px and PNG-encoded (the
            ``-d images/`` path).

Wall time includes starting the worker pool (forkserver), as a user's run does; CPU time
(this process and the pool's, images per CPU-second) shows what the pool costs in work. The
output bytes do not depend on the worker count (checked here on every run).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from _common import OUT_DIR, column, cpu_seconds, interleave, median, paired_ratio, spread, write_result

from wgan_dist.data.write import write_shards  # noqa: E402


def folder_source(count: int) -> Path:
    """``count`` 128 px sketches as PNG files in class folders (written once)."""
    from bench_loader import image_folder, shard_set

    per_class = count // 8
    return image_folder(shard_set(128, "png", per_class))


def digest(out: Path) -> str:
    m = json.loads((out / "manifest.json").read_text())
    return hashlib.sha256("".join(s["sha256"] for s in m["shards"]).encode()).hexdigest()[:16]


def run(source: str, workers: int, per_class: int, folder: Path, digests: dict) -> dict:
    out = OUT_DIR / "shard-bench-tmp" / f"{source}-w{workers}"
    c0, t0 = cpu_seconds(), time.perf_counter()
    if source == "builtin":
        m = write_shards(["builtin"], str(out), kind="builtin", resolution=28, channels=1,
                         builtin_per_class=per_class, workers=workers, overwrite=True, progress=False)
    else:
        m = write_shards([str(folder)], str(out), kind="folder", resolution=64, channels=3,
                         workers=workers, overwrite=True, progress=False)
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0  # the pool is joined by now
    digests.setdefault(source, set()).add(digest(out))
    return {"img_s": m["total"] / seconds, "img_cpu_s": m["total"] / cpu}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1000 images a source, 2 rounds")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 2,
                   help="N, the parallel case (default: all cores)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 3)")
    a = p.parse_args()
    count = 1000 if a.quick else 2000
    repeats = a.repeats or (2 if a.quick else 3)
    folder = folder_source(count)
    digests: dict = {}
    cases = {}
    for source in ("builtin", "folder"):
        for w in sorted({1, a.workers}):
            cases[f"{source}_w{w}"] = (lambda s=source, w=w: run(s, w, count // 8, folder, digests))
    print(f"shard writer, {count} images a source, 1 vs {a.workers} workers; img/s per round:")
    runs = interleave(cases, repeats)
    shutil.rmtree(OUT_DIR / "shard-bench-tmp", ignore_errors=True)
    rows = []
    for source in ("builtin", "folder"):
        one, many = runs[f"{source}_w1"], runs[f"{source}_w{a.workers}"]
        w1, wn = column(one, "img_s"), column(many, "img_s")
        c1, cn = column(one, "img_cpu_s"), column(many, "img_cpu_s")
        rows.append({"source": source, "images": count, "workers": a.workers,
                     "img_s_1_worker": median(w1), "img_s_n_workers": median(wn),
                     "speedup": paired_ratio(wn, w1), "spread_1": spread(w1), "spread_n": spread(wn),
                     "img_cpu_s_1_worker": median(c1), "img_cpu_s_n_workers": median(cn),
                     "cpu_efficiency_n_vs_1": paired_ratio(cn, c1),
                     "runs": {"1": one, str(a.workers): many},
                     "same_bytes_for_any_worker_count": len(digests[source]) == 1})
    print(f"\n{'source':>8} {'1 worker':>9} {f'{a.workers} workers':>10} {'speedup':>8} | "
          f"{'img/CPU-s 1':>11} {f'{a.workers}':>6} {'ratio':>6}  (img/s, medians)")
    for r in rows:
        print(f"{r['source']:>8} {r['img_s_1_worker']:9.0f} {r['img_s_n_workers']:10.0f} "
              f"{r['speedup']:8.2f} | {r['img_cpu_s_1_worker']:11.0f} {r['img_cpu_s_n_workers']:6.0f} "
              f"{r['cpu_efficiency_n_vs_1']:6.2f}  same bytes: {r['same_bytes_for_any_worker_count']}")
    write_result("bench_shard", {"quick": a.quick, "repeats": repeats, "rows": rows})


if __name__ == "__main__":
    main()
