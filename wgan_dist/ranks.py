"""Rank policy, in one place.

Everything that depends on *which* process we are lives here: building the Accelerator (and
refusing the silent single-process trap), seeds per rank and purpose, main-process-only
writes, null loggers off rank 0 (``NullWriter``), and decisions that every rank must
take together (stop, skip a non-finite step).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence, TypeVar

import numpy as np
import torch
from accelerate import Accelerator

T = TypeVar("T")


def launched_world_size() -> int:
    """The world size the launcher (torchrun, accelerate launch, srun) promised, or 1."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def make_accelerator(mixed_precision: str = "no", kwargs_handlers: Sequence[Any] = (),
                     timeout: float | None = None) -> Accelerator:
    """An Accelerator that really is the process group the launcher started.

    On a machine without CUDA a plain ``Accelerator()`` under torchrun reports one process in
    every rank: N silent, independent jobs (FIELD-NOTES). ``cpu=True`` gives a real gloo group.
    We check the result against WORLD_SIZE, so the trap cannot come back unnoticed.
    ``kwargs_handlers``: the backend's settings (DDP's buckets, the GradScaler's);
    ``timeout``: seconds a collective waits for the other ranks (train.collective_timeout;
    gloo's and NCCL's own defaults are tens of minutes).
    """
    from datetime import timedelta

    from accelerate.utils import InitProcessGroupKwargs

    handlers = list(kwargs_handlers)
    if timeout is not None:
        handlers.append(InitProcessGroupKwargs(timeout=timedelta(seconds=timeout)))
    cpu = not torch.cuda.is_available()
    acc = Accelerator(cpu=cpu, mixed_precision=mixed_precision, kwargs_handlers=handlers)
    expected = launched_world_size()
    if acc.num_processes != expected:
        raise RuntimeError(
            f"the launcher started {expected} processes but Accelerate formed a group of "
            f"{acc.num_processes}: refusing to run {expected} independent single-process jobs"
        )
    if mixed_precision == "fp16" and acc.scaler is None:
        # Accelerate builds fp16 autocast and a GradScaler only off-CPU; on a CPU it runs fp32.
        main_print(acc, f"note: train.mixed_precision=fp16 on {acc.device.type}: Accelerate "
                        f"enables fp16 only on GPUs, so this run computes in fp32 (bf16 works on CPU)")
    return acc


def launched_rank() -> int:
    """This process's rank as the launcher set it (RANK), before any group exists: for what
    a command says before it builds one (0 without a launcher)."""
    return int(os.environ.get("RANK", "0") or 0)


_OWN_GROUP = False


def single_process_group() -> None:
    """A gloo group of one process (an in-memory store, no port), for code that needs DDP
    and its communication hooks without a launcher: the toy benchmark's ``grad_comm``.
    ``release_single_process_group`` destroys it again (and only a group made here)."""
    global _OWN_GROUP
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
        _OWN_GROUP = True


def release_single_process_group() -> None:
    global _OWN_GROUP
    import torch.distributed as dist

    if _OWN_GROUP and dist.is_initialized():
        dist.destroy_process_group()
    _OWN_GROUP = False


def seed_for(root: int, *parts: Any) -> int:
    """A 63-bit seed for (root, purpose, rank, step, ...): independent streams per purpose.

    Counter-based: a draw is a function of its coordinates, not of a running RNG state, so a
    resumed run draws exactly what the uninterrupted run would have drawn at the same step.
    """
    text = "/".join(str(p) for p in (root, *parts))
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def generator_for(device: torch.device, root: int, *parts: Any) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(seed_for(root, *parts))
    return g


# What a collective that found no partner says (gloo: a recv that timed out, a peer's socket
# closed; NCCL: its watchdog's timeout).
_COLLECTIVE_FAILURES = ("Timed out waiting", "timeout caused pair closure", "Connection closed by peer",
                        "Connection reset by peer", "collective operation timeout",
                        "NCCL communicator was aborted")


def collective_failure(exc: BaseException) -> str | None:
    """The backend's own words when ``exc`` is a collective that got no answer from another
    rank (its first line, without the source location), else None."""
    text = str(exc)
    if not any(k in text for k in _COLLECTIVE_FAILURES):
        return None
    line = text.strip().splitlines()[0]
    return line.split("] ", 1)[1] if line.startswith("[") and "] " in line else line


class CollectiveTimeout(RuntimeError):
    """Another rank did not answer a collective in time (a stopped, hung or dead rank): exit 1."""


@contextmanager
def bounded_collectives(acc: Accelerator, timeout: float, where: Callable[[], str]) -> Iterator[None]:
    """A collective that got no answer within ``timeout`` seconds (the process group's) becomes
    one line naming this rank and ``where()`` -- what it was doing -- so that the job ends and
    its launcher can restart it."""
    try:
        yield
    except RuntimeError as e:
        what = collective_failure(e)
        if what is None:
            raise
        raise CollectiveTimeout(
            f"rank {acc.process_index}: {where()} got no answer from another rank within "
            f"train.collective_timeout={timeout:g}s ({what}); ending so that the launcher can "
            f"restart the job") from None


def own_generator(acc: Accelerator, device: torch.device, root: int, purpose: str,
                  *parts: Any) -> torch.Generator:
    """This rank's stream for (root, purpose, rank, *parts)."""
    return generator_for(device, root, purpose, acc.process_index, *parts)


def own_share(acc: Accelerator, n: int) -> tuple[slice, int]:
    """This rank's contiguous share of ``n`` items, and the share's size: ceil(n / world),
    rank r taking [r * size, (r + 1) * size), so gathered in rank order the items come back in
    index order, whatever the number of processes (the last share is padded past ``n``)."""
    per = -(-n // acc.num_processes)
    return slice(acc.process_index * per, (acc.process_index + 1) * per), per


def all_ranks_agree(acc: Accelerator, flag: bool, op: str = "any") -> bool:
    """Reduce a boolean over ranks so every rank takes the same decision ("any" or "all")."""
    if acc.num_processes == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=acc.device)
    t = acc.reduce(t, reduction="sum")
    return bool(t.item() > 0) if op == "any" else bool(t.item() == acc.num_processes)


class StopVote:
    """A stop decision every rank takes together, without making the host wait.

    Each step every rank starts a non-blocking all-reduce of its own "stop?" flag and reads the
    result of the vote it started one step earlier: the decision lands one step late, and the
    host never waits for the device for it. The flag lives in host memory and goes over a
    gloo group of its own (created once, by every rank, at start-up), so even on GPUs with
    NCCL it needs no device sync. One process votes alone, at once."""

    def __init__(self, acc: Accelerator) -> None:
        import torch.distributed as dist

        self.world = acc.num_processes
        self.pending = None
        self.group = None
        if self.world > 1:
            self.group = (dist.group.WORLD if dist.get_backend() == "gloo"
                          else dist.new_group(backend="gloo"))

    def step(self, flag: bool) -> bool:
        """Vote ``flag`` now; the agreed result of the previous vote (False at first)."""
        if self.world == 1:
            return flag
        import torch.distributed as dist

        result = self._collect()
        # A NumPy buffer seen as a tensor: gloo reduces into it in place, and the result is
        # read from the buffer without any tensor read (host memory: never a device sync).
        box = np.array([1.0 if flag else 0.0], dtype=np.float32)
        t = torch.from_numpy(box)
        self.pending = (box, t, dist.all_reduce(t, group=self.group, async_op=True))
        return result

    def _collect(self) -> bool:
        if self.pending is None:
            return False
        box, _, work = self.pending
        work.wait()
        self.pending = None
        return bool(box[0] > 0)

    def close(self) -> bool:
        """Finish a vote still in flight (every rank calls it at the end of its loop)."""
        return self._collect()


def reduce_mean(acc: Accelerator, stats: dict[str, torch.Tensor]) -> dict[str, float]:
    """Average a dict of scalar tensors over ranks, then read them once (a host sync)."""
    if not stats:
        return {}
    keys = sorted(stats)
    packed = torch.stack([stats[k].detach().float().reshape(()) for k in keys]).to(acc.device)
    if acc.num_processes > 1:
        packed = acc.reduce(packed, reduction="mean")
    return dict(zip(keys, packed.tolist()))


class NullWriter:
    """Stands in for SummaryWriter off the main process: call sites need no rank checks."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def main_print(acc: Accelerator, *args: Any) -> None:
    if acc.is_main_process:
        print(*args, flush=True)


def on_main(acc: Accelerator, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """``fn(*args, **kwargs)`` on the main process only (its result there, None elsewhere).

    No barrier: callers that need the others to wait for the result use ``main_then_all``."""
    return fn(*args, **kwargs) if acc.is_main_process else None


def main_then_all(acc: Accelerator, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """``on_main`` between two barriers: nobody starts before every rank has arrived (the
    state is complete everywhere) and nobody goes on before the main process is done."""
    acc.wait_for_everyone()
    result = on_main(acc, fn, *args, **kwargs)
    acc.wait_for_everyone()
    return result


def broadcast_from_main(acc: Accelerator, value: T | None) -> T | None:
    """The main process's ``value`` (any picklable object) on every rank, so that every rank
    logs and decides the same."""
    if acc.num_processes == 1:
        return value
    from accelerate.utils import broadcast_object_list

    box = [value]
    broadcast_object_list(box, from_process=0)
    return box[0]


def write_text(acc: Accelerator, path: Path, text: str) -> None:
    """Write a text file from the main process only."""
    on_main(acc, Path(path).write_text, text)


def append_line(acc: Accelerator, path: Path, line: str) -> None:
    """Append one line to a text file from the main process only."""
    def append() -> None:
        with open(path, "a") as f:
            f.write(line + "\n")
    on_main(acc, append)
