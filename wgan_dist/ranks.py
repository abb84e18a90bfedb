"""Rank policy, in one place.

Everything that depends on *which* process we are lives here: building the Accelerator (and
refusing the silent single-process trap), seeds per rank and purpose, main-process-only
writes, the TensorBoard writer that is a no-op off rank 0, and decisions that every rank must
take together (stop, skip a non-finite step).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, GradScalerKwargs

T = TypeVar("T")

DEEPSPEED_ACCELERATE = (
    "Accelerate formed a DeepSpeed state: the trainer builds its DeepSpeed engines itself "
    "(train.backend=deepspeed, docs/deepspeed.md) on a plain process group")


def launcher_deepspeed() -> dict[str, str | None] | None:
    """What `accelerate launch` with a DeepSpeed Accelerate config handed this process (it
    sets ACCELERATE_USE_DEEPSPEED and ACCELERATE_DEEPSPEED_* from the config's
    ``deepspeed_config``), or None for any other launch. ``training.zero.resolve`` routes the
    run to train.backend=deepspeed with it; values are the launcher's strings, absent -> None."""
    env = os.environ
    if env.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return None
    names = {"zero_stage": "ACCELERATE_DEEPSPEED_ZERO_STAGE",
             "config_file": "ACCELERATE_DEEPSPEED_CONFIG_FILE",
             "offload_optimizer_device": "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE",
             "offload_param_device": "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE",
             "gradient_accumulation_steps": "ACCELERATE_GRADIENT_ACCUMULATION_STEPS",
             "gradient_clipping": "ACCELERATE_GRADIENT_CLIPPING"}
    return {key: (None if env.get(var, "none").lower() in ("none", "") else env[var])
            for key, var in names.items()}


def launched_world_size() -> int:
    """The world size the launcher (torchrun, accelerate launch, srun) promised, or 1."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def make_accelerator(mixed_precision: str = "no", bucket_mb: float = 25.0,
                     deepspeed: bool = False) -> Accelerator:
    """An Accelerator that really is the process group the launcher started.

    On a machine without CUDA a plain ``Accelerator()`` under torchrun reports one process in
    every rank: N silent, independent jobs (FIELD-NOTES). ``cpu=True`` gives a real gloo group.
    We check the result against WORLD_SIZE, so the trap cannot come back unnoticed.

    ``deepspeed``: for train.backend=deepspeed, whose engines (``training.zero``) do the
    precision and the gradient reduction; the Accelerator only forms the group and keeps the
    books (rank, device, barriers, reductions), without autocast.
    """
    if deepspeed:
        mixed_precision = "no"
    cpu = not torch.cuda.is_available()
    # broadcast_buffers=False: BatchNorm statistics of the generator stay per rank (as in a
    # DCGAN on one GPU with the local batch); SyncBatchNorm is the option for shared statistics.
    ddp = DistributedDataParallelKwargs(broadcast_buffers=False, bucket_cap_mb=bucket_mb)
    # fp16: the penalty takes the gradient of the *scaled* critic output, so each sample's
    # first gradient is the scale itself; the default 2**16 exceeds fp16's max (65504) and
    # the first steps would always overflow. 2**10 leaves room and grows as usual.
    scaler = GradScalerKwargs(init_scale=2.0**10)
    # An Accelerate DeepSpeed launch sets ACCELERATE_USE_DEEPSPEED; hidden while the Accelerator
    # is built, so that it forms the plain group: its DeepSpeed plugin needs `transformers` and
    # on a CPU forms no DeepSpeed group (docs/deepspeed.md). training.zero builds the engines.
    launched = os.environ.pop("ACCELERATE_USE_DEEPSPEED", None)
    try:
        acc = Accelerator(cpu=cpu, mixed_precision=mixed_precision, kwargs_handlers=[ddp, scaler])
    finally:
        if launched is not None:
            os.environ["ACCELERATE_USE_DEEPSPEED"] = launched
    expected = launched_world_size()
    if acc.num_processes != expected:
        raise RuntimeError(
            f"the launcher started {expected} processes but Accelerate formed a group of "
            f"{acc.num_processes}: refusing to run {expected} independent single-process jobs"
        )
    if acc.distributed_type == DistributedType.DEEPSPEED:
        raise RuntimeError(DEEPSPEED_ACCELERATE)
    if mixed_precision == "fp16" and acc.scaler is None:
        # Accelerate builds fp16 autocast and a GradScaler only off-CPU; on a CPU it runs fp32.
        main_print(acc, f"note: train.mixed_precision=fp16 on {acc.device.type}: Accelerate "
                        f"enables fp16 only on GPUs, so this run computes in fp32 (bf16 works on CPU)")
    return acc


def bucket_mb_for(grad_comm: str, bucket_mb: float) -> float:
    """DDP's bucket size for ``train.grad_comm``. PowerSGD on gloo (no CUDA) gets one bucket
    for everything: its hook chains a second all-reduce in a callback of the first, and gloo
    runs callbacks on its own thread, so with several buckets that all-reduce and the next
    bucket's are issued in a different order on different ranks (a collective mismatch,
    reproduced with celeba128 on 2 CPU processes). NCCL completes the first future when it is
    enqueued, so the callbacks run in program order there and the bucket size is kept."""
    if grad_comm == "powersgd" and not torch.cuda.is_available():
        return max(bucket_mb, 1024.0)
    return bucket_mb


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a Slurm allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def choose_threads(requested: int, loader_workers: int) -> tuple[int, str]:
    """torch intra-op threads for this process, and why.

    ``requested`` > 0 is taken as it is. 0 (auto): $OMP_NUM_THREADS when set (the user's or
    the launcher's choice), else this process's share of the cores (cores / processes on
    this node) minus its loader workers, at least 1. More threads than free cores is the
    trap: OpenMP's barriers wait for a thread the OS has descheduled, and a step runs many
    times slower (benchmarks/bench_threads.py measures it)."""
    if requested > 0:
        return requested, "train.threads"
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    cores, local = usable_cores(), int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    n = max(1, cores // max(local, 1) - loader_workers)
    return n, f"{cores} cores / {local} process(es) - {loader_workers} loader worker(s)"


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


def all_ranks_agree(acc: Accelerator, flag: bool, op: str = "any") -> bool:
    """Reduce a boolean over ranks so every rank takes the same decision ("any" or "all")."""
    if acc.num_processes == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=acc.device)
    t = acc.reduce(t, reduction="sum")
    return bool(t.item() > 0) if op == "any" else bool(t.item() == acc.num_processes)


def host_flag(t: torch.Tensor) -> torch.Tensor:
    """Mark a host-memory control tensor: reading it is not a device sync (the benchmarks'
    host-read counter, ``training.instrument``, leaves it out)."""
    t._wgan_host_flag = True
    return t


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
        t = host_flag(torch.tensor([1.0 if flag else 0.0]))
        self.pending = (t, dist.all_reduce(t, group=self.group, async_op=True))
        return result

    def _collect(self) -> bool:
        if self.pending is None:
            return False
        t, work = self.pending
        work.wait()
        self.pending = None
        return bool(t.numpy()[0] > 0)  # host memory: not a device read

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


def make_writer(acc: Accelerator, log_dir: Path):
    if not acc.is_main_process:
        return NullWriter()
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(log_dir))


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
