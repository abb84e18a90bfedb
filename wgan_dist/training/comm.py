"""What crosses the wire: gradient compression for DDP, and a meter of the bytes all-reduced.

``train.grad_comm`` picks a DDP communication hook for both networks:

- ``fp32``: DDP's own all-reduce of the fp32 gradients (no hook);
- ``bf16`` / ``fp16``: gradients cast to 16 bits for the all-reduce and back (torch's
  ``bf16_compress_hook`` / ``fp16_compress_hook``): half the bytes, rounding in the sum;
- ``powersgd``: rank-``train.powersgd_rank`` PowerSGD (Vogels et al., 2019) with error
  feedback, after ``train.powersgd_start`` plain iterations. Its error-feedback memory is not
  part of a checkpoint, so a resumed PowerSGD run is close to, not bitwise equal to, an
  uninterrupted one.

``train.bucket_mb`` is DDP's bucket size. One process (no DDP) communicates nothing.

``CommMeter`` (enabled by ``WGAN_DIST_INSTRUMENT``, see ``instrument``) counts the bytes every
``torch.distributed.all_reduce`` sends, by phase (critic / generator / other), including
what the hooks send; under the meter ``fp32`` goes through torch's ``allreduce_hook``, the
same sum in Python, so it is counted too.
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

SETTINGS = ("fp32", "bf16", "fp16", "powersgd")
INSTRUMENT_ENV = "WGAN_DIST_INSTRUMENT"
"""Names the file an instrumented run writes its counts to (``instrument``); unset: off."""


def metered() -> bool:
    """Whether this run counts the bytes it all-reduces (the benchmarks switch it on)."""
    return bool(os.environ.get(INSTRUMENT_ENV))


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


class CommMeter:
    """Bytes all-reduced per phase; ``phase`` is set by the trainer around each phase."""

    def __init__(self) -> None:
        self.phase = "other"
        self.bytes: dict[str, int] = {}
        self.calls: dict[str, int] = {}
        self._real = None

    def install(self) -> None:
        self._real = real = dist.all_reduce

        def counting(tensor, *args, **kwargs):
            self.bytes[self.phase] = self.bytes.get(self.phase, 0) + tensor.numel() * tensor.element_size()
            self.calls[self.phase] = self.calls.get(self.phase, 0) + 1
            return real(tensor, *args, **kwargs)
        dist.all_reduce = counting

    def uninstall(self) -> None:
        if self._real is not None:
            dist.all_reduce = self._real
            self._real = None


def register(module: Any, setting: str, rank: int = 1, start_iter: int = 10,
             metered: bool = False) -> Any:
    """Install ``setting``'s hook on a DDP module (returns its state, e.g. PowerSGD's);
    nothing for a module that is not DDP-wrapped (one process)."""
    if not isinstance(module, DistributedDataParallel):
        return None
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

    if setting == "fp32":
        if metered:  # the same sum through Python, so that the meter sees it
            module.register_comm_hook(None, default_hooks.allreduce_hook)
        return None
    if setting in ("bf16", "fp16"):
        hook = default_hooks.bf16_compress_hook if setting == "bf16" else default_hooks.fp16_compress_hook
        module.register_comm_hook(None, hook)
        return None
    if setting == "powersgd":
        state = powerSGD_hook.PowerSGDState(process_group=None, matrix_approximation_rank=rank,
                                            start_powerSGD_iter=max(start_iter, 2),
                                            min_compression_rate=1, use_error_feedback=True,
                                            warm_start=True, random_seed=0)
        module.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
        return state
    raise ValueError(f"train.grad_comm={setting!r}: choose {', '.join(SETTINGS)}")
