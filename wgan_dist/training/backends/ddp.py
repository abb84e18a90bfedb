"""DDP through Accelerate (``train.backend=ddp``, the default).

Backward and optimizer step, with the skip of a non-finite step decided by every rank alike.
The gradients are all-reduced by the time a step is decided, so one rank's overflow is every
rank's. Under fp16 the GradScaler checks the gradients itself (it must see an overflow to
lower its scale), and its skip is the same on every rank for the same reason.

With fused Adam (and no GradScaler) the decision stays on the device: the optimizer takes
the flag as ``found_inf`` and skips inside its kernel, so the step has no host sync.
Otherwise reading the flag is the step's one host sync.

Micro-batches (``train.micro_batch``): each piece's backward is weighted by its share of the
batch (so the gradient is the whole batch's, per-sample penalty mean included) and DDP's
all-reduce runs only on the last piece (``no_sync`` before).
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, GradScalerKwargs

from ... import compat
from ...config import Config
from ... import ranks
from ...ranks import all_ranks_agree
from .. import comm
from ..checkpoint import load_module_state
from ..ema import EMA
from ..networks import Network, adam, compiled, init_models, load_optimizer_state, use_fused_adam
from .base import MicroBatch, Stats, split


def accelerator(cfg: Config) -> Accelerator:
    """The process group, with DDP's settings and the fp16 GradScaler's."""
    t = cfg.train
    # broadcast_buffers=False: BatchNorm statistics of the generator stay per rank (as in a
    # DCGAN on one GPU with the local batch); SyncBatchNorm is the option for shared statistics.
    ddp = DistributedDataParallelKwargs(broadcast_buffers=False,
                                        bucket_cap_mb=comm.bucket_mb_for(t.grad_comm, t.bucket_mb))
    # fp16: the penalty takes the gradient of the *scaled* critic output, so each sample's
    # first gradient is the scale itself; the default 2**16 exceeds fp16's max (65504) and
    # the first steps would always overflow. 2**10 leaves room and grows as usual.
    scaler = GradScalerKwargs(init_scale=2.0**10)
    # ranks.make_accelerator looked up at call time: a test installs CPU fp16 machinery there.
    return ranks.make_accelerator(t.mixed_precision, [ddp, scaler], t.collective_timeout)


class DDPBackend:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.acc = accelerator(cfg)
        self.fused_adam = False
        self.comm_states: list[Any] = []

    # ------------------------------------------------------------------ build
    def build(self, cfg: Config, say: Callable[[str], None]) -> tuple[Network, Network, EMA]:
        acc, t = self.acc, cfg.train
        self.cfg = cfg
        g, d, ema = init_models(cfg, acc.device)
        self.fused_adam = use_fused_adam(cfg, acc.device, say)
        opt_g, opt_d = adam(g, cfg.optim.lr_g, cfg, self.fused_adam), adam(d, cfg.optim.lr_d, cfg, self.fused_adam)
        g_wrapped, d_wrapped, opt_g, opt_d = acc.prepare(g, d, opt_g, opt_d)
        nets = []
        for wrapped, opt in ((g_wrapped, opt_g), (d_wrapped, opt_d)):
            raw = acc.unwrap_model(wrapped)
            fwd, frozen = compiled(cfg, wrapped, raw)
            nets.append(Network(raw, fwd, wrapped, frozen, opt, wrapped))
            self.comm_states.append(comm.register(wrapped, t.grad_comm, t.powersgd_rank,
                                                  t.powersgd_start, comm.metered()))
        return nets[0], nets[1], ema

    def describe(self) -> str:
        return (f", gradients all-reduced as {self.cfg.train.grad_comm}"
                if self.acc.num_processes > 1 else "")

    # ------------------------------------------------------------------ a step
    def loss_scale(self, net: Network) -> torch.Tensor | float:
        scaler = self.acc.scaler
        return compat.scaler_scale(scaler) if scaler is not None else 1.0

    def micro_batches(self, net: Network, batch: int) -> list[MicroBatch]:
        return split(batch, self.cfg.train.micro_batch, partial(self.acc.no_sync, net.handle))

    def backward(self, net: Network, loss: torch.Tensor, mb: MicroBatch) -> None:
        self.acc.backward(loss if mb.whole else loss * mb.weight)

    def step(self, net: Network, loss: torch.Tensor, stats: Stats) -> None:
        opt, scaler = net.opt, self.acc.scaler
        if scaler is None:
            found_inf = self._found_inf(loss, opt)
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

    def _found_inf(self, loss: torch.Tensor, opt: Any) -> torch.Tensor:
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

    # ------------------------------------------------------------------ state
    def state_dict(self, G: Network, D: Network) -> dict[str, Any]:
        scaler = self.acc.scaler
        return {"G": G.raw.state_dict(), "D": D.raw.state_dict(),
                "opt_G": G.opt.state_dict(), "opt_D": D.opt.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else {}}

    def load_state_dict(self, G: Network, D: Network, state: dict[str, Any], where: str) -> None:
        load_module_state(G.raw, state["G"], "generator", where)
        load_module_state(D.raw, state["D"], "critic", where)
        load_optimizer_state(G.opt, state["opt_G"])
        load_optimizer_state(D.opt, state["opt_D"])
        if self.acc.scaler is not None and state["scaler"]:
            self.acc.scaler.load_state_dict(state["scaler"])
