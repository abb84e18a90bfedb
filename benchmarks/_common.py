"""What every benchmark shares: the repo on sys.path, interleaved timing, the machine, the JSON.

Timings on a shared machine drift (other jobs come and go), so a benchmark never times A
then B: it runs A, B, A, B, ... in one process and reports medians and the median of the
per-round ratios, which cancels the drift that both sides of a round see.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "benchmarks" / "out"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def machine() -> dict[str, Any]:
    """Enough to read a number later: when, where, how loaded, which torch."""
    import torch

    load = os.getloadavg()
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "load_avg_1_5_15": [round(x, 2) for x in load],
        "cpu": _cpu_model(), "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git": _git_rev(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _git_rev() -> str | None:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                             capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("+dirty" if dirty else "") if rev else None
    except (OSError, subprocess.SubprocessError):
        return None


def interleave(cases: dict[str, Callable[[], Any]], repeats: int,
               log: Callable[[str], None] = print) -> dict[str, list[Any]]:
    """Run every case once per round, ``repeats`` rounds; each call returns its own measure
    (seconds or a rate, or a dict of them: the first is logged). The order inside a round
    rotates so no case always runs first."""
    names = list(cases)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            out[n].append(cases[n]())
        log(f"  round {r + 1}/{repeats}: " + "  ".join(f"{n} {_first(out[n][-1]):.4g}" for n in names))
    return out


def _first(x: Any) -> float:
    return next(iter(x.values())) if isinstance(x, dict) else x


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of a[i] / b[i]: both sides of a round share the machine's load."""
    return statistics.median(x / y for x, y in zip(a, b))


def spread(xs: list[float]) -> float:
    """(max - min) / median: how noisy a series was."""
    return (max(xs) - min(xs)) / statistics.median(xs) if xs else float("nan")


def cpu_seconds() -> float:
    """CPU seconds of this process and all its descendants, live or gone: DataLoader workers
    (our children), and pool workers started through a forkserver (its children, reaped by
    it). Unlike the wall clock it hardly moves with the load other jobs put on a shared
    machine; with one torch thread it is the work done."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    total = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    try:
        import psutil
    except ImportError:  # then only children we waited for count
        return total
    for p in psutil.Process().children(recursive=True):
        try:
            t = p.cpu_times()  # its own time, and that of the children it reaped
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


def column(runs: list[dict], key: str) -> list[float]:
    return [r[key] for r in runs]


class Timer:
    def __enter__(self) -> "Timer":
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.t0


def write_result(name: str, result: dict[str, Any]) -> Path:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), **result}, indent=1))
    print(f"wrote {path.relative_to(REPO)}")
    return path
