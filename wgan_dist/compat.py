"""Every use of a private (underscore) torch, webdataset or accelerate API, behind one small
function each.

Why they are used at all: each one saves a host sync or a few kernel launches per step in
the hot loop, or reuses a library's own tested code instead of a copy of it. Why they are
here: a new release may rename or drop any of them without notice, so no other module
touches them, and ``tests/test_compat.py`` exercises each function on real objects, so a
release that breaks one fails the suite loudly instead of silently taking a slower or wrong
path. No function here falls back quietly: if the private API is gone, it raises
``CompatError`` naming the function, the API and the versions checked.

Checked with torch 2.14.1, webdataset 1.0.2, accelerate 1.15.0 and 1.16.0.
"""
from __future__ import annotations

import random
from typing import Any, Iterator, Sequence

import torch

CHECKED = "torch 2.14.1, webdataset 1.0.2, accelerate 1.15.0/1.16.0"


class CompatError(RuntimeError):
    """A private library API this project relies on is missing from the installed version."""


def _missing(what: str, exc: Exception) -> CompatError:
    return CompatError(f"{what} is not available in this installation ({type(exc).__name__}: "
                       f"{exc}); wgan_dist was checked with {CHECKED}. See wgan_dist/compat.py.")


def fused_kernel_devices() -> list[str]:
    """Device types with fused Adam kernels (``cuda``, and ``cpu`` since torch 2.4).

    torch has no public query; the optimizer itself calls
    ``torch.utils._foreach_utils._get_fused_kernels_supported_devices`` to validate
    ``fused=True``, so asking the same function gives the same answer it would."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError as e:
        raise _missing("torch.utils._foreach_utils._get_fused_kernels_supported_devices", e) from None
    return list(_get_fused_kernels_supported_devices())


def scaler_scale(scaler: Any) -> torch.Tensor | float:
    """The GradScaler's current scale *without* reading it to the host.

    ``GradScaler.get_scale()`` returns a Python float (a host sync per call); the penalty
    recipe only needs to multiply by the scale, so the device tensor is enough. Before the
    scaler's first ``scale()`` it has no tensor yet and the float is returned."""
    try:
        scale = scaler._get_scale_async()
    except AttributeError as e:
        raise _missing("GradScaler._get_scale_async", e) from None
    return scaler.get_scale() if scale is None else scale


def step_unless_found_inf(optimizer: Any, found_inf: torch.Tensor) -> None:
    """Step a *fused* Adam/AdamW that skips itself, on the device, when ``found_inf`` is 1.

    Fused optimizers read ``self.found_inf`` (and ``self.grad_scale``) in ``step()``; that is
    how ``GradScaler`` hands them its overflow flag without a host sync. We hand them ours
    (a 0-dim float tensor on the parameters' device). ``optimizer`` may be a wrapper with an
    ``.optimizer`` (Accelerate's): the flag goes on the torch optimizer inside, the step goes
    through the wrapper. The attribute is removed after the step, so no later step sees a
    stale flag."""
    inner = getattr(optimizer, "optimizer", optimizer)
    if not inner.defaults.get("fused"):
        raise ValueError("step_unless_found_inf needs an optimizer built with fused=True")
    inner.found_inf = found_inf
    try:
        optimizer.step()
    finally:
        del inner.found_inf


def non_finite_check_(grads: Sequence[torch.Tensor], found_inf: torch.Tensor) -> None:
    """Set ``found_inf`` (a 1-element float tensor) to 1 when any of ``grads`` (one device,
    one dtype) holds an inf or NaN, in one fused kernel and without a host sync.

    This is GradScaler's own check (``torch._amp_foreach_non_finite_check_and_unscale_``),
    called with an inverse scale of 1, so the gradients are left as they are."""
    try:
        fn = torch._amp_foreach_non_finite_check_and_unscale_
    except AttributeError as e:
        raise _missing("torch._amp_foreach_non_finite_check_and_unscale_", e) from None
    fn(list(grads), found_inf, torch.ones(1, device=found_inf.device))


def foreach_lerp_(targets: Sequence[torch.Tensor], sources: Sequence[torch.Tensor],
                  weight: float) -> None:
    """``t += weight * (s - t)`` for every pair, in one multi-tensor kernel (the EMA update).

    ``torch._foreach_lerp_`` is what ``torch.optim`` uses internally; a Python loop of
    ``lerp_`` is the same maths at one launch per tensor."""
    try:
        fn = torch._foreach_lerp_
    except AttributeError as e:
        raise _missing("torch._foreach_lerp_", e) from None
    fn(list(targets), list(sources), weight)


def shuffle_samples(src: Iterator[dict], bufsize: int, initial: int,
                    rng: random.Random) -> Iterator[dict]:
    """webdataset's shuffle buffer driven by *our* seeded ``rng``.

    The public ``wds.shuffle`` stage seeds itself (from the worker and time unless told
    otherwise); the seeded generator function behind it, ``webdataset.filters._shuffle``,
    takes an ``rng``, which is what a resumable, per-(rank, worker) seeded run needs."""
    try:
        from webdataset.filters import _shuffle
    except ImportError as e:
        raise _missing("webdataset.filters._shuffle", e) from None
    return _shuffle(src, bufsize, initial, rng=rng)


def shutdown_loader_workers(iterator: Any) -> None:
    """Stop a DataLoader iterator's worker processes now and join them.

    The iterator does this in ``__del__``, but after an error its frames sit in the exception's
    traceback (a reference cycle that only the garbage collector breaks), so at interpreter
    exit multiprocessing would wait on workers still blocked on their index queues.
    ``_MultiProcessingDataLoaderIter._shutdown_workers`` is what ``__del__`` calls; an
    iterator without workers (``num_workers=0``) has nothing to stop."""
    if not hasattr(iterator, "_workers"):
        return  # single-process iterator
    try:
        iterator._shutdown_workers()
    except AttributeError as e:
        raise _missing("torch.utils.data.dataloader._MultiProcessingDataLoaderIter._shutdown_workers",
                       e) from None


def reset_accelerator_state() -> None:
    """Forget Accelerate's process-wide singleton state, so a second ``Accelerator`` in the
    same process (tests, benchmarks) can take other settings (mixed precision, cpu)."""
    try:
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
    except (ImportError, AttributeError) as e:
        raise _missing("accelerate.state.AcceleratorState._reset_state", e) from None


def flop_counter() -> Any:
    """A context manager that counts FLOPs at the dispatcher with torch's own per-op formulas
    (``torch.utils.flop_counter.flop_registry``); ``.flops`` after the block.

    ``FlopCounterMode`` itself installs module hooks that break ``torch.autograd.grad`` with
    ``create_graph=True``, which the gradient penalty needs; a bare dispatch mode
    (``torch.utils._python_dispatch.TorchDispatchMode``, private) sees every op, the penalty's
    double backward included."""
    try:
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.flop_counter import flop_registry
    except ImportError as e:
        raise _missing("torch.utils._python_dispatch.TorchDispatchMode", e) from None

    class FlopCount(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.flops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                self.flops += formula(*args, **kwargs, out_val=out)
            return out

    return FlopCount()
