"""Backward and optimizer step, with the skip of a non-finite step decided by every rank alike.

The gradients are all-reduced by the time a step is decided, so one rank's overflow is every
rank's. Under fp16 the GradScaler checks the gradients itself (it must see an overflow to
lower its scale), and its skip is the same on every rank for the same reason.

With fused Adam (and no GradScaler) the decision stays on the device: the optimizer takes
the flag as ``found_inf`` and skips inside its kernel, so the step has no host sync.
Otherwise reading the flag is the phase's one host sync.
"""
from __future__ import annotations

from typing import Any

import torch
from accelerate import Accelerator

from .. import compat
from ..ranks import all_ranks_agree


class StepRunner:
    def __init__(self, acc: Accelerator, fused_adam: bool) -> None:
        self.acc, self.fused_adam = acc, fused_adam

    def apply(self, loss: torch.Tensor, opt: Any, stats: dict) -> None:
        """Backward ``loss``, step ``opt`` unless something is non-finite, zero the gradients;
        ``stats["skipped_steps"]`` is 1 for a skipped step (a device tensor, not read here)."""
        scaler = self.acc.scaler
        self.acc.backward(loss)
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
        if finite:
            opt.step()
        elif scaler is not None:
            # Under fp16 a non-finite loss is mostly the *scaled* penalty gradient overflowing
            # (scaled-output recipe): back the scale off as the scaler would for an overflowing
            # gradient, or it never shrinks and every later step overflows too.
            scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
        skipped = not finite or (scaler is not None and opt.step_was_skipped)
        # On the loss's device, like every other statistic: the tick stacks them all.
        stats["skipped_steps"] = torch.tensor(1.0 if skipped else 0.0, device=loss.device)
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
