"""Fault injection against the trainer: real processes, real files (the findings of the faults
issue, one test or more each).

1. A failing run exits promptly with one line and the right code, with a loader worker
   (a garbled image inside a shard, a full disk while saving, a second Ctrl-C, a SIGTERM to a
   process that cannot stop), and leaves no loader worker behind.
2. A damaged newest checkpoint never wins: it is skipped and the previous one resumed;
   rotation keeps the checkpoint it just wrote; stale temporary files are removed.
3. The final checkpoint is written before the final evaluation, and a resumed run evaluates.
4. The reader checks its shards: a truncated shard, a manifest that lies, a garbled image are
   reported with the shard (and key) named.
5. Invalid settings are refused in one line, an unsafe YAML too.
6. Exit codes: 0 finished, 2 refused, 75 stopped by a signal with a checkpoint.
"""
from __future__ import annotations

import io
import json
import os
import resource
import shutil
import signal
import subprocess
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import PY, REPO, tiny_overrides
from wgan_dist.compat import reset_accelerator_state
from wgan_dist.config import load_config
from wgan_dist.data.format import file_sha256
from wgan_dist.training import checkpoint as ckpt
from wgan_dist.training.signals import BURST
from wgan_dist.training.trainer import Trainer

BOUND = 90  # seconds: every failure here must end the process well within this


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    e.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
    return e


def start(args: list[str], log: Path, **popen) -> subprocess.Popen:
    f = open(log, "w")
    return subprocess.Popen([PY, "-m", "wgan_dist.train", *args], cwd=REPO, env=env(), stdout=f,
                            stderr=subprocess.STDOUT, start_new_session=True, **popen)


def session_members(sid: int) -> list[int]:
    """Processes still alive in session ``sid`` (the trainer and its loader workers)."""
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[3]) == sid and fields[0] != "Z":
                    out.append(int(p.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def finish(proc: subprocess.Popen, log: Path, timeout: float = BOUND) -> tuple[int, str]:
    """Exit code and output; fails (and kills everything) if the process does not end, or
    leaves a loader worker behind for more than a few seconds."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"hung for {timeout} s: {proc.args}\n{log.read_text()[-4000:]}")
    deadline = time.time() + 8
    while session_members(proc.pid) and time.time() < deadline:
        time.sleep(0.2)
    left = session_members(proc.pid)
    if left:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"processes outlived the trainer: {left}")
    return proc.returncode, log.read_text()


def error_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(("error:", "config error:"))]


def run_cli(args: list[str], tmp_path: Path, name: str = "cli.log") -> tuple[int, str]:
    return finish(start(args, tmp_path / name), tmp_path / name)


@pytest.fixture()
def shards(builtin_shards, tmp_path) -> Path:
    """A private copy of the built-in test shards, free to damage."""
    out = tmp_path / "shards"
    shutil.copytree(builtin_shards, out)
    return out


def rewrite_manifest(shard_dir: Path) -> None:
    """Record the shards' current checksums: damage that a manifest cannot see."""
    m = json.loads((shard_dir / "manifest.json").read_text())
    for s in m["shards"]:
        s["sha256"] = file_sha256(shard_dir / s["name"])
    (shard_dir / "manifest.json").write_text(json.dumps(m))


def garble_one_image(shard_dir: Path, index: int = 5) -> str:
    """Replace one PNG inside the shard by garbage (same size), checksums updated."""
    path = shard_dir / "shard-000000.tar"
    with tarfile.open(path) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
    pngs = [i for i, (m, _) in enumerate(members) if m.name.endswith(".png")]
    target, data = members[pngs[index]]
    members[pngs[index]] = (target, b"\x89PNG garbage" + b"\0" * (len(data) - 12))
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for m, data in members:
            tf.addfile(m, io.BytesIO(data))
    rewrite_manifest(shard_dir)
    return target.name.split(".")[0]


# ------------------------------------------------------------------------------ 1. exits
def test_garbled_image_fails_fast_naming_shard_and_key(shards, tmp_path):
    key = garble_one_image(shards)
    code, out = run_cli(tiny_overrides(shards, tmp_path / "run", **{
        "data.workers": 1, "train.steps": 200, "data.shuffle_buffer": 2}), tmp_path)
    assert code == 2, out[-3000:]
    lines = error_lines(out)
    assert len(lines) == 1 and "shard-000000.tar" in lines[0] and key in lines[0], out[-3000:]
    assert "cannot decode its png entry" in lines[0] and "Traceback" not in out


def test_full_disk_while_saving_fails_with_one_line(builtin_shards, tmp_path):
    def small_files():  # a disk that fills up: writes past 64 KiB fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
    log = tmp_path / "disk.log"
    proc = start(tiny_overrides(builtin_shards, tmp_path / "run", **{
        "data.workers": 1, "log.sample_every": 1000, "eval.num": 16}), log, preexec_fn=small_files)
    code, out = finish(proc, log)
    assert code == 1, out[-3000:]
    lines = error_lines(out)
    assert len(lines) == 1 and "File too large" in lines[0], out[-3000:]
    assert not list((tmp_path / "run" / "checkpoints").glob(".step-*")), "temporary file left"


def test_second_ctrl_c_stops_at_once(builtin_shards, tmp_path):
    log = tmp_path / "c.log"
    proc = start(tiny_overrides(builtin_shards, tmp_path / "run", **{
        "data.workers": 1, "train.steps": 100000, "log.tick_every": 1,
        "log.ckpt_every": 100000}), log)
    deadline = time.time() + BOUND
    while "step      2/" not in log.read_text():
        assert time.time() < deadline and proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    code, out = finish(proc, log, timeout=30)
    assert code in (75, 130), out[-3000:]  # saved already, or stopped at once


def test_sigterm_ends_a_process_that_cannot_stop(tmp_path):
    """The watchdog: a main thread blocked for good still ends train.stop_grace seconds
    after SIGTERM (128 + 15), and at once on a second signal (one more than BURST seconds
    after the first: a launcher passing the first on is not a second)."""
    code = ("from wgan_dist.training.signals import StopSignals\n"
            "import threading, sys\n"
            "s = StopSignals(0, grace=float(sys.argv[1])); s.install()\n"
            "print('ready', flush=True); threading.Event().wait()\n")
    for grace, signals, expect in [(1.5, 1, 143), (600, 2, 143)]:
        proc = subprocess.Popen([PY, "-c", code, str(grace)], cwd=REPO, env=env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout.readline().strip() == "ready"
        t0 = time.time()
        for _ in range(signals):
            proc.send_signal(signal.SIGTERM)
            time.sleep(BURST + 0.3)
        proc.wait(timeout=20)
        assert proc.returncode == expect and time.time() - t0 < (grace if signals == 1 else 0) + 12


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_stop_signal_saves_and_exits_75(builtin_shards, tmp_path, sig):
    log = tmp_path / "s.log"
    run = tmp_path / "run"
    proc = start(tiny_overrides(builtin_shards, run, **{
        "data.workers": 1, "train.steps": 100000, "log.tick_every": 1,
        "log.ckpt_every": 100000}), log)
    deadline = time.time() + BOUND
    while "step      2/" not in log.read_text():
        assert time.time() < deadline and proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.1)
    proc.send_signal(sig)
    code, out = finish(proc, log)
    assert code == 75 and "stop requested: saved" in out, out[-3000:]
    assert ckpt.load_checkpoint(run)["step"] >= 2


# ------------------------------------------------------------------------------ 2. checkpoints
def _train_to(shards: Path, run: Path, steps: int, tmp_path: Path, resume: bool = False,
              **extra) -> tuple[int, str]:
    args = tiny_overrides(shards, run, **{"train.steps": steps, "log.ckpt_every": 3, **extra})
    return run_cli([*args, *(["--resume"] if resume else [])], tmp_path, f"to{steps}.log")


def flip_bytes_in_a_tensor(path: Path) -> None:
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)  # the largest tensor record
    name_len, extra_len = (int.from_bytes(data[info.header_offset + o:info.header_offset + o + 2],
                                          "little") for o in (26, 28))  # the local header's own
    start = info.header_offset + 30 + name_len + extra_len + 64
    for i in range(start, start + 64):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["bitflip", "truncate", "empty"])
def test_damaged_newest_checkpoint_is_skipped(builtin_shards, tmp_path, damage):
    run = tmp_path / "run"
    assert _train_to(builtin_shards, run, 6, tmp_path)[0] == 0
    newest = ckpt.checkpoint_dir(run) / "step-00000006.pt"
    if damage == "bitflip":
        flip_bytes_in_a_tensor(newest)
        assert torch.load(newest, weights_only=True)["step"] == 6  # torch alone takes it
    elif damage == "truncate":
        newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    else:
        newest.write_bytes(b"")
    code, out = _train_to(builtin_shards, run, 8, tmp_path, resume=True)
    assert code == 0, out[-3000:]
    assert "skipping" in out and "step-00000006.pt" in out
    assert "resumed from" in out and "step-00000003.pt at step 3" in out, out[-3000:]
    assert ckpt.load_checkpoint(run)["step"] == 8


def test_rotation_keeps_the_checkpoint_it_wrote_and_cleans_temporaries(builtin_shards, tmp_path):
    run = tmp_path / "run"
    assert _train_to(builtin_shards, run, 3, tmp_path, **{"log.keep_checkpoints": 1})[0] == 0
    d = ckpt.checkpoint_dir(run)
    (d / "step-00000009.pt").write_bytes(b"PK\x03\x04 not a checkpoint")  # newer, damaged
    (d / ".step-00000004.pt.tmp-4242").write_bytes(b"half")  # a killed save's leftover
    code, out = _train_to(builtin_shards, run, 5, tmp_path, resume=True,
                          **{"log.keep_checkpoints": 1, "log.ckpt_every": 1})
    assert code == 0, out[-3000:]
    assert not (d / ".step-00000004.pt.tmp-4242").exists()
    state, skipped = ckpt.newest_readable(run)
    assert state is not None and state["path"].endswith("step-00000005.pt") and skipped


# ------------------------------------------------------------------------------ 3. final save
def test_final_checkpoint_precedes_final_evaluation(builtin_shards, tmp_path, monkeypatch):
    from wgan_dist.training.monitor import QualityMonitor

    run = tmp_path / "run"
    overrides = tiny_overrides(builtin_shards, run, **{"log.ckpt_every": 100})
    real = QualityMonitor.evaluate

    def broken(self, *args, **kwargs):
        raise RuntimeError("the evaluation broke")
    monkeypatch.setattr(QualityMonitor, "evaluate", broken)
    reset_accelerator_state()
    trainer = Trainer(load_config(None, overrides))
    with pytest.raises(RuntimeError, match="evaluation broke"):
        trainer.train()
    trainer.close()
    assert ckpt.load_checkpoint(run)["step"] == 6  # saved before the evaluation ran
    monkeypatch.setattr(QualityMonitor, "evaluate", real)
    reset_accelerator_state()
    trainer = Trainer(load_config(None, overrides), resume="latest")
    result = trainer.train()
    trainer.close()
    assert "swd_avg" in result  # the resumed run evaluated the end instead of doing nothing
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [6]


def test_fid_without_weights_is_refused_at_start(builtin_shards, tmp_path, monkeypatch):
    monkeypatch.delenv("WGAN_DIST_INCEPTION_WEIGHTS", raising=False)
    code, out = run_cli(tiny_overrides(builtin_shards, tmp_path / "run", **{"eval.fid": True}),
                        tmp_path)
    assert code == 2 and "Inception FID weights not found" in out and "step      1/" not in out
    assert not (tmp_path / "run").exists(), "a failed start left a run directory"


# ------------------------------------------------------------------------------ 4. shards
def test_truncated_shard_is_named(shards, tmp_path):
    path = shards / "shard-000000.tar"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    code, out = run_cli(tiny_overrides(shards, tmp_path / "run"), tmp_path)
    assert code == 2 and "shard-000000.tar" in error_lines(out)[0], out[-3000:]


def test_truncated_at_a_member_boundary_with_matching_checksum_is_caught(shards, tmp_path):
    path = shards / "shard-000000.tar"
    with tarfile.open(path) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()][:60]  # 20 samples
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for m, data in members:
            tf.addfile(m, io.BytesIO(data))
    rewrite_manifest(shards)  # the checksum agrees; the count does not
    code, out = run_cli(tiny_overrides(shards, tmp_path / "run"), tmp_path)
    assert code == 2, out[-3000:]
    assert "shard-000000.tar: holds 20 samples but the manifest says 320" in error_lines(out)[0]


def test_manifest_that_claims_more_than_it_lists(shards, tmp_path):
    m = json.loads((shards / "manifest.json").read_text())
    m["total"] = 5000
    (shards / "manifest.json").write_text(json.dumps(m))
    code, out = run_cli(tiny_overrides(shards, tmp_path / "run"), tmp_path)
    assert code == 2 and "claims 5000 samples but its shards list 320" in out, out[-3000:]


def test_replaced_shard_fails_its_checksum(shards, tmp_path):
    path = shards / "shard-000000.tar"
    data = bytearray(path.read_bytes())
    data[2000] ^= 0x01  # one bit inside a member: headers and counts still fine
    path.write_bytes(bytes(data))
    code, out = run_cli(tiny_overrides(shards, tmp_path / "run", **{"data.workers": 1}), tmp_path)
    assert code == 2 and "sha256 does not match" in out and "shard-000000.tar" in out, out[-3000:]


# ------------------------------------------------------------------------------ 5. settings
@pytest.mark.parametrize("override,message", [
    ("loss.gp_weight=-10", "loss.gp_weight=-10.0: must be >= 0"),
    ("log.ckpt_every=0", "log.ckpt_every=0: must be >= 1"),
    ("log.tick_every=0", "log.tick_every=0: must be >= 1"),
    ("train.batch_size=8.7", "train.batch_size: expected an integer, got 8.7"),
    ("optim.beta2=1.5", "optim.beta2=1.5: must be >= 0 and < 1"),
    ("data.workers=-1", "data.workers=-1: must be >= 0"),
])
def test_invalid_values_are_refused_in_one_line(override, message, tmp_path):
    code, out = run_cli([override, "--dry-run"], tmp_path)
    assert code == 2 and out.strip().splitlines()[-1] == f"config error: {message}", out


def test_unsafe_yaml_is_refused_in_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: !!python/object/apply:os.system ['echo pwned']\n")
    code, out = run_cli(["--config", str(bad), "--dry-run"], tmp_path)
    assert code == 2 and len(out.strip().splitlines()) == 1, out
    assert out.startswith(f"config error: {bad}:1: not a plain YAML config") and "pwned" not in out
