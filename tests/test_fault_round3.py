"""Fault injection, third round (issue #24): real processes, real files, one test or more per
finding taken.

1. Class names never write outside ``--out``: unsafe ``.ndjson`` words are skipped and listed,
   a manifest, ``data.class_names`` or a checkpoint holding one is refused.
5. A shard truncated or overwritten while it is read ends in one line naming it (exit 2),
   not a SIGBUS, with or without loader workers.
6. Logging never crashes a run on non-finite statistics (a diverged critic's histogram).
7. One bad input never aborts the shard command: non-UTF-8 file names, deeply nested or
   non-finite ``.ndjson`` lines are skipped and listed.
8. Resource bombs are bounded: YAML aliases and size, ``.npz`` members, image pixels.
9. Exit codes and hints: launchers, ``generate``/``evaluate`` counts and ``--out``, settings
   that failed late, checkpoints rotated away while read, orphaned loader workers.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import PY, REPO, tiny_overrides
from test_fault_injection import env, error_lines, finish, run_cli, session_members, start
from wgan_dist.training import checkpoint as ckpt

COND = {"model.conditional": True, "model.cond": "both", "loss.ac_fake": True}


def tiny(shards: Path, run_dir: Path, **extra) -> list[str]:
    """conftest's tiny model, with a 64-image final evaluation (1000 by default: most of a
    tiny run's time)."""
    return tiny_overrides(shards, run_dir, **{"eval.num": 64, **extra})


def command(module: str, *args: str, timeout: float = 120, **popen) -> tuple[int, str]:
    """Run ``python -m wgan_dist.<module> ARGS``; (exit code, stdout + stderr)."""
    r = subprocess.run([PY, "-m", f"wgan_dist.{module}", *args], cwd=REPO, env=env(),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=timeout, **popen)
    return r.returncode, r.stdout


def shard(*args: str, timeout: float = 120) -> tuple[int, str]:
    return command("shard", *args, "--no-progress", timeout=timeout)


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def reasons(m: dict) -> dict[str, str]:
    """input -> reason, every skip of a manifest."""
    return {s["input"]: s["reason"] for s in m["skipped"]}


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def drawing_line(word: str, cls: int = 0, i: int = 0) -> str:
    from wgan_dist.data.builtin import builtin_drawing

    strokes, _ = builtin_drawing(cls, i, seed=0)
    return json.dumps({"word": word, "drawing": strokes})


@pytest.fixture(scope="module")
def cond_run(builtin_shards, tmp_path_factory) -> Path:
    """A finished 6-step conditional run on the built-in test shards (8 classes)."""
    tmp = tmp_path_factory.mktemp("cond")
    code, out = run_cli([*tiny(builtin_shards, tmp / "run", **COND)], tmp)
    assert code == 0, out[-3000:]
    return tmp / "run"


# ------------------------------------------------------------------------ 1. class names
def test_ndjson_words_that_are_paths_never_leave_out(tmp_path):
    """An .ndjson "word" that is a path ("../../escape", an absolute path) is skipped and
    listed, so a conditional run on the set and ``generate`` write only under --out."""
    src, escape, absolute = tmp_path / "in", tmp_path / "a" / "escape", tmp_path / "abs"
    src.mkdir()
    for k, name in enumerate(["cat", "dog"]):
        lines = [drawing_line(name, k, i) for i in range(12)]
        lines += [drawing_line("../../escape", k), drawing_line(str(absolute), k),
                  drawing_line("..", k), drawing_line("a\\b", k)]
        (src / f"{name}.ndjson").write_text("\n".join(lines) + "\n")
    code, out = shard(str(src), "-o", str(tmp_path / "shards"))
    assert code == 0, out
    m = manifest(tmp_path / "shards")
    assert m["class_names"] == ["cat", "dog"] and m["total"] == 24 and m["inputs"] == 32
    bad = reasons(m)
    assert len(bad) == 8 and all(": bad class name: word " in r for r in bad.values()), bad
    assert "'../../escape': contains a path separator" in bad[f"{src}/cat.ndjson:13"]

    run, gen = tmp_path / "run", tmp_path / "a" / "b" / "gen"
    code, out = run_cli(tiny(tmp_path / "shards", run, **COND), tmp_path)
    assert code == 0, out[-3000:]
    code, out = command("generate", "--checkpoint", str(run), "--num", "2", "--out", str(gen))
    assert code == 0, out
    assert not escape.exists() and not absolute.exists()
    assert files_under(gen) == {"grid.png", "cat", "dog", "cat/000000.png", "cat/000001.png",
                                "dog/000000.png", "dog/000001.png"}


def test_manifest_class_name_that_is_a_path_is_refused(builtin_shards, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(builtin_shards, shards)
    m = manifest(shards)
    m["class_names"][2] = "../../escape"
    (shards / "manifest.json").write_text(json.dumps(m))
    code, out = run_cli(tiny(shards, tmp_path / "run", **COND), tmp_path)
    assert code == 2, out[-3000:]
    (line,) = error_lines(out)
    assert f"{shards}/manifest.json: class name '../../escape' cannot be used" in line, line
    assert not (tmp_path / "run").exists()


def test_data_class_names_that_are_paths_are_refused(tmp_path):
    code, out = run_cli(["data.class_names=cat,/etc/cron.d", "--dry-run"], tmp_path)
    assert code == 2, out
    assert out.strip().splitlines()[-1] == (
        "config error: data.class_names: class name '/etc/cron.d' cannot be used (contains a "
        "path separator); a class name becomes a folder name")


def test_generate_refuses_a_checkpoint_whose_class_name_is_a_path(cond_run, tmp_path):
    """A checkpoint of an older version (or edited) holding an unsafe class name: generate
    refuses in one line before it creates anything."""
    run = tmp_path / "run"
    shutil.copytree(cond_run, run)
    path = ckpt.latest_checkpoint(run)
    state = ckpt.load_checkpoint(path)
    state.pop("path")
    state["class_names"][1] = "../../escape"
    ckpt.atomic_save(state, path)
    gen = tmp_path / "a" / "b" / "gen"
    code, out = command("generate", "--checkpoint", str(run), "--num", "2", "--out", str(gen))
    assert code == 2, out
    assert out.startswith(f"error: {path}: class name '../../escape' cannot be used"), out
    assert not (tmp_path / "a").exists()


# ------------------------------------------------------------------------ 7. bad inputs
def test_bad_ndjson_lines_and_file_names_are_skipped_and_listed(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    good = [drawing_line("cat", 0, i) for i in range(5)]
    bad_lines = {
        6: "[" * 100_000 + "]" * 100_000,                          # RecursionError in json
        7: '{"word": "cat", "drawing": [[[NaN, 1], [2, 3]]]}',
        8: '{"word": "cat", "drawing": [[[0, Infinity], [2, 3]]]}',
        9: '{"word": "cat", "drawing": [[[1e308, 1], [2, 3]]]}',
    }
    (src / "cat.ndjson").write_text("\n".join(good + list(bad_lines.values())) + "\n")
    bad_name = os.fsencode(src) + b"/dog\xff.ndjson"
    with open(bad_name, "w") as f:
        f.write(drawing_line("dog", 1) + "\n")
    code, out = shard(str(src), "-o", str(tmp_path / "out"))
    assert code == 0, out
    m = manifest(tmp_path / "out")
    assert m["total"] == 5 and m["inputs"] == 10 and m["class_names"] == ["cat"]
    got = reasons(m)
    assert got[f"{src}/cat.ndjson:6"].endswith("not JSON: nested too deeply")
    for n in (7, 8, 9):
        assert "bad drawing: a coordinate is not a finite number" in got[f"{src}/cat.ndjson:{n}"]
    assert got[f"{src}/dog\\xff.ndjson"].endswith("bad file name: not valid UTF-8 (rename the file)")
    assert "5 samples" in out and "5 skipped" in out


def test_image_folder_with_names_that_are_not_utf8(tmp_path):
    from PIL import Image

    src = tmp_path / "in"
    for cls in ("cats", "dogs"):
        (src / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (32, 32), 40 * i).save(src / cls / f"{i}.png")
    Image.new("L", (32, 32)).save(os.fsencode(src / "cats") + b"/caf\xe9.png")
    os.mkdir(os.fsencode(src) + b"/bad\xffclass")
    Image.new("L", (32, 32)).save(os.fsencode(src) + b"/bad\xffclass/0.png")
    code, out = shard(str(src), "-o", str(tmp_path / "out"))
    assert code == 0, out
    m = manifest(tmp_path / "out")
    assert m["class_names"] == ["cats", "dogs"] and m["total"] == 6 and m["inputs"] == 8
    got = reasons(m)
    assert got[f"{src}/cats/caf\\xe9.png"].endswith("bad file name: not valid UTF-8 (rename the file)")
    assert "bad class name: class folder name 'bad\\\\xffclass': not valid UTF-8" in \
        got[f"{src}/bad\\xffclass/0.png"], got


# ------------------------------------------------------------------------ 8. resource bombs
def billion_laughs() -> str:
    """Nine nested lists of nine aliases each (331 bytes; 9**9 strings once expanded), the
    value of a real setting."""
    parts = ['&a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, cur in zip("abcdefgh", "bcdefghi"):
        parts.append(f"&{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "name: [" + ", ".join(parts) + "]\n"


def limit_memory(gib: float):
    def apply() -> None:
        import resource
        resource.setrlimit(resource.RLIMIT_DATA, (int(gib * 2**30), int(gib * 2**30)))
    return apply


@pytest.mark.parametrize("kind", ["aliases", "size"])
def test_yaml_bombs_are_refused_at_once(tmp_path, kind):
    bad = tmp_path / "bomb.yaml"
    if kind == "aliases":
        bad.write_text(billion_laughs())
        message = f"config error: {bad}:1: not a plain YAML config (alias *a: configs take no"
    else:  # a 2 MB quoted string (PyYAML needs ~3 s a MB)
        bad.write_text('name: "' + "x" * (2 << 20) + '"\n')
        message = f"config error: {bad}: larger than 1 MiB"
    t0 = time.time()
    code, out = command("train", "--config", str(bad), "--dry-run", timeout=60,
                        preexec_fn=limit_memory(3))
    assert code == 2 and out.startswith(message) and len(out.strip().splitlines()) == 1, out[-2000:]
    assert time.time() - t0 < 30


def npz_bomb(path: Path, rows: int) -> None:
    """A one-array .npz whose (rows, 784) uint8 zeros inflate ~1000x (written in chunks)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        with z.open("drawings.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": "|u1", "fortran_order": False, "shape": (rows, 784)})
            chunk = bytes(784 * 4096)
            for start in range(0, rows, 4096):
                f.write(chunk[:784 * min(4096, rows - start)])


def max_rss_mb(args: list[str]) -> tuple[int, str, float]:
    """Run a command in a fresh parent and return (code, output, its peak RSS in MB): the
    parent's RUSAGE_CHILDREN sees this command only."""
    probe = ("import resource, subprocess, sys\n"
             "r = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)\n"
             "print(r.stdout, end='')\n"
             "print('MAXRSS', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)\n"
             "sys.exit(r.returncode)\n")
    r = subprocess.run([PY, "-c", probe, *args], cwd=REPO, env=env(), capture_output=True,
                       text=True, timeout=300)
    out, rss = r.stdout.rsplit("MAXRSS", 1)
    return r.returncode, out + r.stderr, float(rss)


def test_npz_zip_bomb_is_read_lazily(tmp_path):
    """A 4 MB .npz declaring a 1 GB array: --limit 10 keeps 10 rows, never the array. Peak
    memory is compared with the same command on a 100-row file (the command itself, torch
    imported by webdataset, takes ~0.65 GB here; inflating the bomb took 1 GB more)."""
    bomb, small = tmp_path / "bomb.npz", tmp_path / "small.npz"
    npz_bomb(bomb, 1_300_000)
    npz_bomb(small, 100)
    assert bomb.stat().st_size < 8 << 20
    rss = {}
    for path in (small, bomb):
        code, out, rss[path] = max_rss_mb([PY, "-m", "wgan_dist.shard", str(path), "-o",
                                           str(tmp_path / path.stem), "--limit", "10",
                                           "--no-progress"])
        assert code == 0 and "wrote 10 samples" in out, out
    assert rss[bomb] - rss[small] < 256, f"peak memory {rss[bomb]:.0f} MB vs {rss[small]:.0f} MB"
    m = manifest(tmp_path / "bomb")
    assert m["total"] == 10 and m["inputs"] == 10


def test_npz_whose_header_and_zip_directory_disagree_is_skipped(tmp_path):
    path = tmp_path / "cat.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        with z.open("drawings.npy", "w") as f:  # declares 5000 rows, holds 100
            np.lib.format.write_array_header_1_0(
                f, {"descr": "|u1", "fortran_order": False, "shape": (5000, 784)})
            f.write(bytes(784 * 100))
    code, out = shard(str(path), "-o", str(tmp_path / "out"))
    assert code == 2, out
    assert "cat.npz: corrupt: cannot read .npz (ValueError: the .npy header declares shape " \
           "(5000, 784) of uint8 (3,920,000 bytes) but the zip directory says the member " \
           "inflates to 78,400 bytes)" in out, out


def test_images_over_the_pixel_cap_are_skipped_before_decoding(tmp_path):
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    Image.new("1", (8200, 8200)).save(src / "huge.png")  # 67 Mpx, under PIL's own limit
    Image.new("L", (120, 100), 90).save(src / "medium.png")
    Image.new("L", (40, 40), 200).save(src / "small.png")
    code, out = shard(str(src), "-o", str(tmp_path / "out"))
    assert code == 0, out
    got = reasons(manifest(tmp_path / "out"))
    assert got == {str(src / "huge.png"): f"{src}/huge.png: too large: 8200x8200 = 67,240,000 "
                                          f"pixels > --max-pixels 64,000,000; not decoded"}
    code, out = shard(str(src), "-o", str(tmp_path / "out2"), "--max-pixels", "5000")
    assert code == 0 and manifest(tmp_path / "out2")["total"] == 1, out
    assert set(reasons(manifest(tmp_path / "out2"))) == {str(src / "huge.png"),
                                                         str(src / "medium.png")}


# ------------------------------------------------------------------------ 5. shard changed under a run
def wait_for(proc: subprocess.Popen, log: Path, text: str, timeout: float = 90) -> None:
    """Until ``text`` is in the log; on failure the process's whole session is killed (a run
    of 100,000 steps must not outlive its test)."""
    deadline = time.time() + timeout
    while text not in log.read_text():
        if time.time() > deadline or proc.poll() is not None:
            for pid in session_members(proc.pid):
                os.kill(pid, signal.SIGKILL)
            pytest.fail(f"never saw {text!r}\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


@pytest.mark.parametrize("damage", ["truncate", "cp-over"])
@pytest.mark.parametrize("workers", [0, 1])
def test_shard_changed_while_read_is_named(builtin_shards, tmp_path, workers, damage):
    """``: > shard.tar`` or a ``cp`` of a smaller shard over it while the run reads it: one
    line naming the shard, exit 2 (it was SIGBUS: exit 135 with no message, or "worker
    killed by signal: Bus error")."""
    shards = tmp_path / "shards"
    shutil.copytree(builtin_shards, shards)
    smaller = tmp_path / "smaller.tar"
    with open(shards / "shard-000000.tar", "rb") as f:
        smaller.write_bytes(f.read(40_000))
    log = tmp_path / "t.log"
    proc = start(tiny(shards, tmp_path / "run", **{
        "data.workers": workers, "train.steps": 100000, "log.tick_every": 1,
        "log.ckpt_every": 100000, "log.sample_every": 100000, "data.shuffle_buffer": 1}), log)
    wait_for(proc, log, "step      3/")
    target = shards / "shard-000000.tar"
    if damage == "truncate":
        with open(target, "r+b") as f:
            f.truncate(0)
    else:
        shutil.copyfile(smaller, target)  # opens the same file with O_TRUNC, then writes
    code, out = finish(proc, log)
    assert code == 2, f"exit {code}\n{out[-3000:]}"
    (line,) = error_lines(out)
    assert str(target) in line and "Traceback" not in out, out[-3000:]


# ------------------------------------------------------------------------ 6. logging and NaN
@pytest.mark.parametrize("lr", ["optim.lr_d", "optim.lr_g"])
def test_logging_survives_non_finite_statistics(builtin_shards, tmp_path, lr):
    """A learning rate of 1e30 makes every statistic NaN. The penalty histogram, gradient maps
    and sample grids must not end the run (it raised "The histogram is empty" at the first
    sample step, before any checkpoint). This tests the logging only: what a run should do
    about the divergence itself is another finding."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    # The guard would stop this run (tests/test_faults_run.py); here it looks on.
    code, out = run_cli(tiny(builtin_shards, run, **{lr: 1e30, "train.divergence_ticks": 1000}),
                        tmp_path)
    assert "histogram" not in out and "RuntimeWarning" not in out, out[-3000:]
    assert code == 0, out[-3000:]
    assert ckpt.load_checkpoint(run)["step"] == 6
    events = EventAccumulator(str(run / "logs"))
    events.Reload()
    nonfinite = [e.value for e in events.Scalars("GP/fraction_norm_nonfinite")]
    assert len(nonfinite) == 2 and nonfinite[-1] > 0  # steps 3 and 6, said, not raised
    assert len(list((run / "samples").glob("step-*.png"))) == 2


# ------------------------------------------------------------------------ 9. exit codes and hints
def launch_env(**extra: str) -> dict[str, str]:
    drop = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "NPROC", "NNODES")
    e = {k: v for k, v in env().items() if k not in drop and not k.startswith("ACCELERATE_")}
    e.update(PYTHON=PY, NPROC="1", **extra)
    return e


def ctrl_c_at_step_3(cmd: list[str], shards: Path, run: Path, log: Path,
                     **extra_env: str) -> tuple[int, str]:
    """Start a launch in its own session, press Ctrl-C (SIGINT to the whole process group,
    as a terminal does) once it is at step 3; its exit code and output."""
    args = tiny(shards, run, **{
        "data.workers": 1, "train.steps": 100000, "log.tick_every": 1, "log.ckpt_every": 100000,
        "log.sample_every": 100000})
    with open(log, "w") as f:
        proc = subprocess.Popen([*cmd, *args], cwd=REPO, env=launch_env(**extra_env), stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(proc, log, "step      3/")
        os.killpg(proc.pid, signal.SIGINT)
        return finish(proc, log)
    finally:  # the scripts put the launcher in a process group of its own: kill by session
        for pid in session_members(proc.pid):
            os.kill(pid, signal.SIGKILL)


def test_ctrl_c_under_launch_torchrun_sh_exits_75(builtin_shards, tmp_path):
    """torchrun itself exits 1 after a signal (its SignalException); our script gives 75 and
    leaves no process behind (``finish``). (launch/deepspeed.sh shares launch/relay.sh; a
    DeepSpeed engine takes minutes to start on this CPU, too slow a test.)"""
    run = tmp_path / "run"
    code, out = ctrl_c_at_step_3(["bash", "launch/torchrun.sh"], builtin_shards, run,
                                 tmp_path / "t.log", TMPDIR=str(tmp_path))
    assert code == 75, f"exit {code}\n{out[-3000:]}"
    assert "stop requested: saved" in out and ckpt.load_checkpoint(run)["step"] >= 3
    assert not list(tmp_path.glob("wgan_dist-exit.*")), "the exit-code folder was left behind"


def test_ctrl_c_under_accelerate_launch_saves_the_checkpoint(builtin_shards, tmp_path):
    """accelerate launch passes a Ctrl-C on as SIGTERM within milliseconds: that is the same
    stop request, not a second one, so the checkpoint is written (it was not: "second stop
    signal: stopping now, without a checkpoint"). The launcher's own code is 130, as
    docs/faults.md says."""
    run = tmp_path / "run"
    code, out = ctrl_c_at_step_3([PY, "-m", "accelerate.commands.launch", "--num_processes", "1",
                                  "--cpu", "-m", "wgan_dist.train"], builtin_shards, run,
                                 tmp_path / "a.log")
    assert "without a checkpoint" not in out and "stop requested: saved" in out, out[-3000:]
    assert code == 130 and ckpt.load_checkpoint(run)["step"] >= 3


@pytest.mark.parametrize("cmd,args,message", [
    ("generate", ["--num", "0"], "error: --num 0: must be >= 1"),
    ("generate", ["--num", "-5"], "error: --num -5: must be >= 1"),
    ("generate", ["--interpolate", "-1"], "error: --interpolate -1: must be >= 0"),
    ("evaluate", ["--num", "-5"], "error: --num -5: must be >= 2"),
    ("evaluate", ["--num", "0"], "error: --num 0: must be >= 2"),
])
def test_generate_and_evaluate_refuse_impossible_counts(cond_run, tmp_path, cmd, args, message):
    """Refused in one line, exit 2, before anything is loaded or created (generate --num 0
    wrote 64 images; --num -5 was a RuntimeError, exit 1, and left an empty folder)."""
    out_dir = tmp_path / "out"
    code, out = command(cmd, "--checkpoint", str(cond_run), *args, "--out", str(out_dir))
    assert code == 2 and out.strip().startswith(message) and len(out.strip().splitlines()) == 1, out
    assert not out_dir.exists()


def test_evaluate_refuses_an_out_that_is_a_folder_before_computing(cond_run, tmp_path):
    code, out = command("evaluate", "--checkpoint", str(cond_run), "--num", "16", "--out",
                        str(tmp_path))
    assert code == 2, out
    assert out.strip() == (f"error: --out {tmp_path}: is a directory; give the path of the JSON "
                           f"file to write (e.g. {tmp_path / 'evaluate.json'})")
    code, out = command("evaluate", "--checkpoint", str(cond_run), "--num", "16", "--out",
                        str(tmp_path / "new" / "eval.json"))
    assert code == 0, out
    assert json.loads((tmp_path / "new" / "eval.json").read_text())["num_fake"] == 16


@pytest.mark.parametrize("overrides,message", [
    (["train.micro_batch=3", "train.batch_size=16"],
     "config error: train.micro_batch=3 does not divide train.batch_size=16: the last "
     "micro-batch would hold 1; choose one of 2, 4, 8"),
    (["train.seed=1e20"], "config error: train.seed=100000000000000000000: must be >= 0 and < 2**63"),
])
def test_settings_that_failed_late_are_refused_at_load(builtin_shards, tmp_path, overrides,
                                                       message):
    """micro_batch 3 of 16 ended in a BatchNorm error naming no setting; seed 1e20 trained and
    then failed in the evaluation with an overflow."""
    code, out = run_cli(tiny(builtin_shards, tmp_path / "run") + overrides, tmp_path)
    assert code == 2 and out.strip().splitlines()[-1] == message, out[-3000:]
    assert not (tmp_path / "run").exists()


def test_manifest_with_zero_channels_names_the_manifest(builtin_shards, tmp_path):
    """It suggested data.channels=0, which the config then refuses."""
    shards = tmp_path / "shards"
    shutil.copytree(builtin_shards, shards)
    m = manifest(shards)
    m["channels"] = 0
    (shards / "manifest.json").write_text(json.dumps(m))
    code, out = run_cli(tiny(shards, tmp_path / "run"), tmp_path)
    assert code == 2, out[-3000:]
    assert error_lines(out) == [f"error: {shards}/manifest.json: channels 0 is not 1 or 3 "
                                f"(damaged manifest; re-shard)"]


def test_loading_while_rotation_deletes_is_never_called_damaged(tmp_path):
    """A reader (generate, evaluate on a live run dir) lists the newest checkpoint; the run
    saves a newer one and rotation deletes the listed one before it is opened. That was
    "damaged or incomplete" (8 of 472 loads): now the list is read again."""
    run = tmp_path / "run"
    writer = ("import sys, torch\n"
              "from wgan_dist.training import checkpoint as ckpt\n"
              "step = 1\n"
              "while True:\n"
              "    ckpt.save_checkpoint({'step': step, 'w': torch.full((256,), float(step))},\n"
              "                         sys.argv[1], step, keep=1)\n"
              "    step += 1\n")
    proc = subprocess.Popen([PY, "-c", writer, str(run)], cwd=REPO, env=env())
    try:
        deadline = time.time() + 60
        while ckpt.latest_checkpoint(run) is None:
            assert time.time() < deadline and proc.poll() is None
            time.sleep(0.05)
        steps, rotated = [], []
        for _ in range(400):
            state = ckpt.load_checkpoint(run, log=rotated.append)
            assert float(state["w"][0]) == state["step"]  # the file verified is the file read
            steps.append(state["step"])
    finally:
        proc.kill()
        proc.wait()
    assert steps == sorted(steps) and steps[-1] > steps[0] + 20, steps[::40]
    assert all("rotated away while being read; retrying the newest" in m for m in rotated)


def test_loader_worker_does_not_outlive_a_killed_rank(builtin_shards, tmp_path):
    """What a launcher does when a rank dies: SIGTERM to the group, then the rank is gone
    (SIGKILL). Its loader worker outlived it by ~60 s (a non-daemon SIGTERM clock kept the
    worker's interpreter from exiting); now it follows within a second or two."""
    log = tmp_path / "o.log"
    proc = start(tiny(builtin_shards, tmp_path / "run", **{
        "data.workers": 1, "train.steps": 100000, "log.tick_every": 1,
        "log.ckpt_every": 100000, "log.sample_every": 100000}), log)
    wait_for(proc, log, "step      3/")
    assert len(session_members(proc.pid)) == 2  # the trainer and its loader worker
    os.killpg(proc.pid, signal.SIGTERM)
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    t0 = time.time()
    while session_members(proc.pid) and time.time() - t0 < 20:
        time.sleep(0.1)
    left = session_members(proc.pid)
    if left:
        os.killpg(proc.pid, signal.SIGKILL)
    assert not left and time.time() - t0 < 5, f"worker {left} lived {time.time() - t0:.1f} s on"


def read_only(folder: Path, on: bool) -> None:
    """Make a folder unwritable, for root too (the immutable attribute; root ignores modes)."""
    if os.geteuid() != 0:
        folder.chmod(0o555 if on else 0o755)
        return
    subprocess.run(["chattr", "+i" if on else "-i", str(folder)], check=True)


def test_read_only_run_dir_is_one_line(builtin_shards, tmp_path):
    """A run dir whose logs/ cannot be written: one line (it was TensorBoard's writer thread's
    38-line traceback, then the line)."""
    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    read_only(run / "logs", True)
    try:
        code, out = run_cli(tiny(builtin_shards, run), tmp_path)
    finally:
        read_only(run / "logs", False)
    assert code == 2 and "Traceback" not in out, out[-3000:]
    (line,) = error_lines(out)
    assert line.startswith(f"error: PermissionError: {run}/logs: cannot write in the run "
                           f"directory (") and line.endswith("choose another log.run_dir"), line


def test_conditional_resume_on_other_class_names_is_refused(cond_run, builtin_shards, tmp_path):
    """Same number of classes, other names (here two swapped): each label would mean another
    class. It resumed silently."""
    run, shards = tmp_path / "run", tmp_path / "shards"
    shutil.copytree(cond_run, run)
    shutil.copytree(builtin_shards, shards)
    m = manifest(shards)
    names = m["class_names"]
    names[0], names[1] = names[1], names[0]
    (shards / "manifest.json").write_text(json.dumps(m))
    code, out = run_cli(["--run-dir", str(run), "--resume", f"data.shards={shards}",
                         "train.steps=8"], tmp_path)
    assert code == 2, out[-3000:]
    (line,) = error_lines(out)
    assert "was trained on 8 classes (bicycle, cup, fish" in line and \
        f"{shards}/manifest.json has 8 (cup, bicycle, fish" in line, line
    assert ckpt.load_checkpoint(run)["step"] == 6  # nothing written


def test_class_count_refusal_on_resume_gives_a_hint_that_works(cond_run, tmp_path):
    """Resuming an 8-class run on a 2-class set suggested model.num_classes=0, which then
    failed differently (the checkpoint's embedding does not fit)."""
    src = tmp_path / "in"
    src.mkdir()
    for k, name in enumerate(["cat", "dog"]):
        (src / f"{name}.ndjson").write_text(
            "\n".join(drawing_line(name, k, i) for i in range(8)) + "\n")
    assert shard(str(src), "-o", str(tmp_path / "two"))[0] == 0
    run = tmp_path / "run"
    shutil.copytree(cond_run, run)
    code, out = run_cli(["--run-dir", str(run), "--resume", f"data.shards={tmp_path / 'two'}",
                         "train.steps=8"], tmp_path)
    assert code == 2, out[-3000:]
    (line,) = error_lines(out)
    assert "model.num_classes=0" not in line and "was trained on 8 classes" in line and \
        "has 2 (cat, dog)" in line and \
        "resume with the data it was trained on" in line, line


def test_launch_script_killed_outright_stops_its_launcher(builtin_shards, tmp_path):
    """launch/relay.sh runs the launcher in a process group of its own (one Ctrl-C, one
    signal); SIGKILL to the script's group must still stop the launcher (setpriv's parent-death
    signal: SIGTERM, the ordinary stop, with its checkpoint), not leave it training."""
    run, log = tmp_path / "run", tmp_path / "k.log"
    args = tiny(builtin_shards, run, **{
        "data.workers": 1, "train.steps": 100000, "log.tick_every": 1, "log.ckpt_every": 100000,
        "log.sample_every": 100000})
    with open(log, "w") as f:
        proc = subprocess.Popen(["bash", "launch/torchrun.sh", *args], cwd=REPO,
                                env=launch_env(TMPDIR=str(tmp_path)), stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
    wait_for(proc, log, "step      3/")
    os.killpg(proc.pid, signal.SIGKILL)  # bash only: the launcher is in another group
    proc.wait()
    t0 = time.time()
    while session_members(proc.pid) and time.time() - t0 < 60:
        time.sleep(0.2)
    left = session_members(proc.pid)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"the launcher outlived its script: {left}\n{log.read_text()[-3000:]}"
    assert "stop requested: saved" in log.read_text() and ckpt.load_checkpoint(run)["step"] >= 3
