"""benchmarks/gpu_check.sh --cpu-smoke: the one-shot GPU check at toy sizes on the CPU, as CI runs
it, so the script cannot rot: every section runs, the JSON is complete and finite, the table
names every case and every input path."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from conftest import REPO


def _numbers(x):
    if isinstance(x, bool) or x is None:
        return
    if isinstance(x, (int, float)):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from _numbers(v)
    elif isinstance(x, list):
        for v in x:
            yield from _numbers(v)


def test_cpu_smoke_writes_a_complete_finite_report(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    r = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--cpu-smoke", "--out", str(out)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "result: OK" in r.stdout
    res = json.loads((out / "gpu_check.json").read_text())
    assert res["cpu_smoke"] and res["device"] == "cpu" and res["failures"] == []
    assert set(res["elapsed_s"]) == {"runs", "throughput", "nccl", "input", "total"}

    # 1. runs: DDP fp32 and bf16, DeepSpeed ZeRO-2 bf16; each split run resumed exactly
    assert set(res["runs"]) == {"fp32", "bf16", "zero2-bf16"}
    for prec in ("fp32", "bf16", "zero2-bf16"):
        run = res["runs"][prec]
        assert run["resume"]["exact"] and run["resume"]["steps"] == [run["steps"]] * 2
        assert run["losses_finite"] and [p["rc"] for p in run["split"]["processes"]] == [0, 0]
        assert run["full"]["ticks"][-1]["step"] == run["steps"]
        assert all(math.isfinite(v) for v in run["final"].values())

    # 2. throughput: every case at both sizes; compile skipped with its reason, the rest measured
    cases = res["throughput"]["cases"]
    names = ["fp32", "fp32+fused", "bf16", "bf16+cl", "bf16+fused", "bf16+cl+fused", "bf16+compile"]
    assert sorted({(c["case"], c["px"]) for c in cases}) == sorted(
        {(n, px) for n in names for px in (28, 32)})
    for c in cases:
        if c["case"] == "bf16+compile":
            assert c["skipped"] == "compile: cpu smoke"
            continue
        assert "error" not in c and c["losses_finite"]
        for part in ("critic", "g_step"):
            assert c[part]["img_s"] > 0 and c[part]["tflops"] > 0 and c[part]["vs_plain"] > 0
            assert c[part]["pct_peak"] is None  # no stated peak for a CPU: n/a
        assert c["peak_mem_gb"] > 0

    # 3. nccl: no GPUs, so the same 2-process launch on gloo; both grad_comm settings train
    n = res["nccl"]
    assert n["backend"] == "gloo (cpu smoke)" and n["processes"] == 2
    for comm in ("fp32", "bf16"):
        assert n[comm]["ok"] and n[comm]["losses_finite"] and n[comm]["img_s"] > 0
    assert n["bf16_vs_fp32"] > 0

    # 4. input: real photos through the Trainer, each path beside section 2's random tensors
    inp = res["input"]
    assert inp["photos"] > 0 and inp["workers"] == os.cpu_count()
    rows = {(r["input"], r["px"]): r for r in inp["rows"]}
    assert set(rows) == {(name, 32) for name in ("stream", "device", "encoded")}  # smoke: 32 px only
    for (name, px), row in rows.items():
        assert "error" not in row, row
        assert row["cache"] == {"stream": "none"}.get(name, name)  # what the run settled on
        random = next(c for c in cases if c["case"] == row["case"] == "bf16+fused" and c["px"] == px)
        assert row["random_img_s"] == random["g_step"]["img_s"] and row["batch"] == random["batch"]
        assert len(row["ticks_img_s"]) >= 2 and row["img_s"] > 0
        assert row["vs_random"] == row["img_s"] / row["random_img_s"]
    assert any("device cache end to end" in t and "n/a (cpu smoke)" in t for t in res["targets"])

    bad = [x for x in _numbers(res) if not math.isfinite(x)]
    assert not bad, bad

    table = (out / "gpu_check.md").read_text()
    for n in names:
        assert f"| {n} | 28 |" in table and f"| {n} | 32 |" in table
    for heading in ("## runs", "## throughput", "## nccl", "## input", "## targets"):
        assert heading in table
    for name in ("stream", "device", "encoded"):
        assert f"| {name} | 32 |" in table
    assert "compile: cpu smoke" in table and table in r.stdout
