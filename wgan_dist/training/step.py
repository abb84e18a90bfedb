"""Backward and optimizer step, with the skip of a non-finite step decided by every rank alike.

The gradients are all-reduced by the time a step is decided, so one rank's overflow is every
rank's. Under fp16 the GradScaler checks the gradients itself (it must see an overflow to
lower its scale), and its skip is the same on every rank for the same reason.

With fused Adam (and no GradScaler) the decision stays on the device: the optimizer takes
the flag as ``found_inf`` and skips inside its kernel, so the step has no host sync.
Otherwise reading the flag is the phase's one host sync.
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable

import torch
from accelerate import Accelerator

from .. import compat
from ..ranks import all_ranks_agree


class StepRunner:
    def __init__(self, acc: Accelerator, fused_adam: bool) -> None:
        self.acc, self.fused_adam = acc, fused_adam

    def loss_scale(self, opt: Any) -> torch.Tensor | float:
        """The scale the penalty differentiates: the GradScaler's (fp16), else 1."""
        scaler = self.acc.scaler
        return compat.scaler_scale(scaler) if scaler is not None else 1.0

    def apply(self, loss: torch.Tensor, opt: Any, stats: dict) -> None:
        """Backward ``loss``, step ``opt`` unless something is non-finite, zero the gradients;
        ``stats["skipped_steps"]`` is 1 for a skipped step (a device tensor, not read here)."""
        self.acc.backward(loss)
        self.finish(loss, opt, stats)

    def accumulate(self, ddp_module: Any, opt: Any, batch: int, micro: int,
                   compute: Callable[[slice], tuple[torch.Tensor, dict]]) -> dict:
        """One step from micro-batches: ``compute(sl)`` gives the loss and statistics of
        samples ``sl``; each micro-batch's backward is weighted by its share of the batch (so
        the gradient is the whole batch's, per-sample penalty mean included) and DDP's
        all-reduce runs only on the last (``no_sync`` before). ``micro`` 0 or >= batch: one
        piece, exactly ``apply``."""
        if not micro or micro >= batch:
            loss, stats = compute(slice(None))
            self.apply(loss, opt, stats)
            return stats
        cuts = list(range(0, batch, micro)) + [batch]
        total: torch.Tensor | float = 0.0
        sums: dict[str, torch.Tensor] = {}
        for k, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
            w = (b - a) / batch
            last = k == len(cuts) - 2
            with nullcontext() if last else self.acc.no_sync(ddp_module):
                loss, stats = compute(slice(a, b))
                self.acc.backward(loss * w)
            total = total + loss.detach() * w
            for key, v in stats.items():
                sums[key] = sums[key] + v * w if key in sums else v * w
        self.finish(total, opt, sums)
        return sums

    def finish(self, loss: torch.Tensor, opt: Any, stats: dict) -> None:
        """After the backward: step unless non-finite (on every rank alike), zero the grads."""
        scaler = self.acc.scaler
        if scaler is None:
            found_inf = self.found_inf(loss, opt)
            if self.fused_adam:
                compat.step_unless_found_inf(opt, found_inf)
                stats["skipped_steps"] = found_inf
                opt.zero_grad(set_to_none=True)
                return
            finite = not bool(found_inf.item())
        else:
            finite = all_ranks_agree(self.acc, bool(torch.isfinite(loss.detach()).item()), "all")
        # On the loss's device, like every other statistic: the tick stacks them all.
        skipped = torch.tensor(0.0 if finite else 1.0, device=loss.device)
        if finite:
            before = torch.as_tensor(compat.scaler_scale(scaler)).clone() if scaler else None
            opt.step()
            if scaler is not None:
                # The scaler backs its scale off exactly when it skipped the step. Accelerate's
                # ``step_was_skipped`` cannot see that with a fused Adam: the scaler hands the
                # overflow flag to the fused kernel, which skips on the device.
                after = torch.as_tensor(compat.scaler_scale(scaler))
                skipped = (after < before.to(after.device)).float().to(loss.device)
        elif scaler is not None:
            # Under fp16 a non-finite loss is mostly the *scaled* penalty gradient overflowing
            # (scaled-output recipe): back the scale off as the scaler would for an overflowing
            # gradient, or it never shrinks and every later step overflows too.
            scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
        stats["skipped_steps"] = skipped
        opt.zero_grad(set_to_none=True)

    def found_inf(self, loss: torch.Tensor, opt: Any) -> torch.Tensor:
        """1.0 where the loss or a gradient of ``opt``'s parameters is non-finite on any rank,
        else 0.0: a 0-dim tensor on the device, not read here (fused Adam subtracts it from
        its step counts). One fused kernel per device and dtype, not a few per parameter."""
        found = (~torch.isfinite(loss.detach())).float().reshape(1)
        by_kind: dict[tuple, list[torch.Tensor]] = {}
        for group in opt.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    by_kind.setdefault((p.grad.device, p.grad.dtype), []).append(p.grad)
        for grads in by_kind.values():  # one device in practice: the loss's
            compat.non_finite_check_(grads, found)
        if self.acc.num_processes > 1:  # an async all-reduce: no host sync
            found = self.acc.reduce(found, reduction="sum").clamp_(max=1.0)
        return found.reshape(())
