"""Whole-state checkpoints: one file, written atomically, read with weights_only=True.

A checkpoint holds everything a run needs to continue exactly: generator, critic, generator
EMA, both optimizers, the AMP scaler, the step and images-seen counters, the RNG state, the
resolved config and the class names. It is a dict of tensors and plain Python values, so
``torch.load(path, weights_only=True)`` reads it: no pickled code runs on load.

Why not ``accelerator.save_state``: it writes a folder non-atomically and pickles RNG states
that need ``weights_only=False`` to read back. Our training draws are counter-based (see
``ranks.seed_for``), so exact resumption needs only the step counter; we still store the torch
RNG state for anything outside those streams.
"""
from __future__ import annotations

import io
import os
import re
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch

FORMAT = "wgan_dist-checkpoint/1"
NAME = re.compile(r"^step-(\d{8})\.pt$")
TMP = re.compile(r"^\.step-\d{8}\.pt\.tmp-\d+$")
ROTATION_RETRIES = 20  # a reader re-lists this often when rotation deletes what it listed


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary files are never listed)."""
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def _verify_zip(source: Any, path: Path) -> None:
    """The zip container's CRC-32s (``torch.save`` writes a zip whose every member carries
    one, which ``torch.load`` does not check: a flipped byte inside a tensor loads as a wrong
    value). Raises CheckpointError naming the file and the damage."""
    try:
        with zipfile.ZipFile(source) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path}: damaged or incomplete checkpoint ({type(e).__name__}: {e})") from None
    if bad is not None:
        raise CheckpointError(f"{path}: damaged checkpoint (checksum mismatch in {bad})")


def verify(path: Path) -> None:
    """Check a checkpoint file's container (reads the file)."""
    _verify_zip(Path(path), Path(path))


def read_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """One checkpoint file, read once: its bytes verified (zip CRCs), then loaded from the
    same bytes with ``weights_only=True`` (what is loaded is what was verified, whatever
    rotation does to the name meanwhile). ``state["path"]`` is where it came from."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        raise FileNotFoundError(f"{path}: no such checkpoint") from None
    _verify_zip(io.BytesIO(data), path)
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises several types for corrupt/truncated files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a wgan_dist checkpoint (format {state.get('format')!r})"
                              if isinstance(state, dict) else f"{path}: not a wgan_dist checkpoint")
    state["path"] = str(path)
    return state


def newest_readable(run_dir: Path, map_location: str | torch.device = "cpu",
                    log: Callable[[str], None] = lambda m: None
                    ) -> tuple[dict[str, Any] | None, list[str]]:
    """The newest checkpoint of a run that verifies, read (once), and one line for each newer
    one skipped. A file that vanishes between listing and reading was rotated away by a run
    still saving: the list is read again, not the file called damaged."""
    for _ in range(ROTATION_RETRIES):
        skipped: list[str] = []
        for path in reversed(list_checkpoints(run_dir)):
            try:
                return read_checkpoint(path, map_location), skipped
            except FileNotFoundError:
                log(f"{path.name} was rotated away while being read; retrying the newest")
                break
            except CheckpointError as e:
                skipped.append(str(e))
        else:
            return None, skipped
    raise CheckpointError(f"{checkpoint_dir(run_dir)}: checkpoints kept being rotated away while "
                          f"being read ({ROTATION_RETRIES} tries)")


def atomic_save(obj: dict[str, Any], path: Path) -> None:
    """Write to a temporary name, fsync, verify, then rename: a crash never leaves a half file
    under the final name, and never replaces the last good checkpoint with a broken one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        # Serialised in memory first: a full disk then fails in a plain write with its own
        # error ("No space left on device"), not deep inside torch's zip writer.
        buf = io.BytesIO()
        torch.save(obj, buf)
        try:
            with open(tmp, "wb") as f:
                f.write(buf.getbuffer())
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise OSError(e.errno, f"cannot write the checkpoint {path}: {e.strerror}") from None
        verify(tmp)  # what was written reads back intact
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    # Make the rename itself durable.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save_checkpoint(state: dict[str, Any], run_dir: Path, step: int, keep: int,
                    protect: Path | None = None) -> Path:
    """Save ``state`` as checkpoints/step-XXXXXXXX.pt, then rotate: keep it and the newest
    ``keep - 1`` older ones (``keep`` 0 keeps all). Files *newer* than this step (left by an
    earlier life of the run, e.g. one that failed to verify) are never deleted here, so the
    checkpoint just written and verified always survives; nor is ``protect`` (the newest
    healthy checkpoint, which a rollback goes back to)."""
    path = checkpoint_dir(run_dir) / f"step-{step:08d}.pt"
    atomic_save({"format": FORMAT, **state}, path)
    if keep > 0:
        older = [p for p in list_checkpoints(run_dir) if p.name < path.name and p != protect]
        for old in older[:max(0, len(older) - (keep - 1))]:
            old.unlink(missing_ok=True)
    return path


def find_resume(run_dir: Path, resume: str | None, overwrite: bool,
                log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """The checkpoint a run starts from, read: ``resume`` "latest" (the newest that verifies;
    one must), "auto" (the newest that verifies, if any) or a path; None starts fresh, which a
    run dir holding checkpoints refuses unless ``overwrite``. Skipped checkpoints are logged."""
    if resume in ("latest", "auto"):
        state, skipped = newest_readable(run_dir, log=log)
        for line in skipped:
            log(f"skipping {line}")
        if state is None and resume == "latest":
            why = f" ({len(skipped)} damaged)" if skipped else ""
            raise FileNotFoundError(f"--resume: no usable checkpoint in {checkpoint_dir(run_dir)}{why}")
        return state
    if resume:
        return load_checkpoint(Path(resume), log=log)
    existing = latest_checkpoint(run_dir)
    if existing is not None and not overwrite:
        raise FileExistsError(
            f"{run_dir} already holds checkpoints (newest {existing.name}); pass --resume "
            f"to continue it, --overwrite to start over, or log.run_dir=... for a new run")
    return None


def prepare_run_dir(run_dir: Path, clear_checkpoints: bool) -> None:
    """Create logs/, samples/ and checkpoints/; remove temporary files a killed save left
    behind; with ``clear_checkpoints`` remove old checkpoints too."""
    for sub in ("logs", "samples", "checkpoints"):
        (Path(run_dir) / sub).mkdir(parents=True, exist_ok=True)
        _check_writable(Path(run_dir) / sub)
    for p in checkpoint_dir(run_dir).iterdir():
        if TMP.match(p.name):
            p.unlink(missing_ok=True)
    if clear_checkpoints:
        for p in list_checkpoints(run_dir):
            p.unlink()


def _check_writable(folder: Path) -> None:
    """Create and remove a file in ``folder``: a run dir that cannot be written is one line
    now, not a TensorBoard thread's traceback when its event file is opened, or a lost
    checkpoint hours later."""
    probe = folder / f".write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise PermissionError(f"{folder}: cannot write in the run directory ({e.strerror}); "
                              f"fix its permissions or choose another log.run_dir") from None


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu",
                    log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Read a checkpoint safely (``read_checkpoint``). A run dir (or its checkpoints/) gives
    its newest checkpoint that verifies (``log`` hears about the damaged ones skipped)."""
    path = Path(path)
    if not path.is_dir():
        return read_checkpoint(path, map_location)
    run = path.parent if path.name == "checkpoints" else path
    say = log or (lambda m: None)
    state, skipped = newest_readable(run, map_location, say)
    for line in skipped:
        say(f"skipping {line}")
    if state is None:
        why = f"; {len(skipped)} damaged: {skipped[0]}" if skipped else ""
        raise FileNotFoundError(f"{path}: no usable checkpoint (looked in {checkpoint_dir(run)}{why})")
    return state


def load_module_state(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str,
                      path: str) -> None:
    """load_state_dict with an error that says which shapes do not fit the config."""
    own = module.state_dict()
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
           for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if bad or missing or unexpected:
        detail = "; ".join(bad[:3] + [f"missing {m}" for m in missing[:3]]
                           + [f"unexpected {u}" for u in unexpected[:3]])
        raise CheckpointError(f"{path}: the {what} in this checkpoint does not fit the configured "
                         f"model ({detail}). Use the config the checkpoint was trained with.")
    module.load_state_dict(state)
