"""The partitions of a DeepSpeed ZeRO-1/2 optimizer seen as torch Adam (``ZeroOptimizer``): the
whole network's fp32 master weights and Adam state gathered from every rank's partition for a
checkpoint, and scattered back into them on resume, in torch Adam's own layout, so that a
checkpoint is the same file under every backend and any number of processes.

Private DeepSpeed API, read here only (deepspeed 0.19.8): the optimizer's ``bit16_groups``,
``single_partition_of_fp32_groups``, ``real_dp_process_group`` and ``loss_scaler``, and each
parameter's ``_hp_mapping``; tests/test_deepspeed.py exercises them for real (a gathered
state that differs from DDP's, or a resume that is not bitwise, fails there).
"""
from __future__ import annotations

from typing import Any

import torch

def _pieces(zero: Any, group: int) -> list[tuple[torch.nn.Parameter, Any]]:
    """(parameter, its mapping) of group ``group``, in order; the mapping (or None) says which
    piece of the parameter (``lp_fragment_address``) sits where in this rank's flat fp32
    partition (``hp_fragment_address``). Private DeepSpeed API (0.19.8): ``bit16_groups``,
    ``_hp_mapping``."""
    return [(p, getattr(p, "_hp_mapping", None)) for p in zero.bit16_groups[group]]


def _gather(zero: Any, group: int, flat: torch.Tensor) -> list[torch.Tensor]:
    """The whole of every parameter of ``group`` from each rank's partition ``flat`` (fp32
    master weights or an Adam moment): one all-reduce of a zero-filled buffer in which each
    rank wrote its own pieces (every element has one owner, so the sum is exact)."""
    import torch.distributed as dist

    pieces = _pieces(zero, group)
    full = torch.zeros(sum(p.numel() for p, _ in pieces), dtype=torch.float32, device=flat.device)
    offset = 0
    for p, m in pieces:
        if m is not None:
            lp, hp = m.lp_fragment_address, m.hp_fragment_address
            full[offset + lp.start: offset + lp.start + lp.numel] = flat[hp.start: hp.start + hp.numel]
        offset += p.numel()
    dist.all_reduce(full, group=zero.real_dp_process_group[group])
    return [t.view(p.shape) for t, (p, _) in zip(full.split([p.numel() for p, _ in pieces]), pieces)]


def _scatter(zero: Any, group: int, values: list[torch.Tensor], flat: torch.Tensor) -> None:
    """Write this rank's pieces of whole parameters ``values`` into its partition ``flat``."""
    for (p, m), v in zip(_pieces(zero, group), values):
        if m is not None:
            lp, hp = m.lp_fragment_address, m.hp_fragment_address
            src = v.reshape(-1)[lp.start: lp.start + lp.numel]
            flat[hp.start: hp.start + hp.numel].copy_(src)


class ZeroOptimizer:
    """A ZeRO engine's optimizer seen as the torch Adam of the DDP path: ``param_groups``, and
    ``state_dict`` / ``load_state_dict`` in torch Adam's layout for the whole network (indices
    over ``module.parameters()``). Both are collectives or partition writes: call them on
    every rank. The fp16 loss scaler travels as an extra key (torch's Adam ignores it)."""

    def __init__(self, engine: Any, module: torch.nn.Module) -> None:
        self.engine, self.zero = engine, engine.optimizer
        self.inner = self.zero.optimizer  # the torch Adam, over one flat partition per group
        self.flats = self.zero.single_partition_of_fp32_groups  # private (0.19.8)
        if len(self.flats) != 1 or [id(p) for p, _ in _pieces(self.zero, 0)] != \
                [id(p) for p in module.parameters()]:
            raise RuntimeError("DeepSpeed regrouped the parameters; cannot map its optimizer state")
        self.count = len(list(module.parameters()))

    @property
    def param_groups(self) -> list[dict]:
        return self.inner.param_groups

    def master_weights(self) -> list[torch.Tensor]:
        return _gather(self.zero, 0, self.flats[0])

    def set_master_weights(self, values: list[torch.Tensor]) -> None:
        with torch.no_grad():
            _scatter(self.zero, 0, values, self.flats[0])

    def state_dict(self) -> dict:
        flat = self.flats[0]
        inner = self.inner.state.get(flat, {})
        group = {k: v for k, v in self.inner.param_groups[0].items() if k != "params"}
        out: dict = {"state": {i: {} for i in range(self.count)} if inner else {},
                     "param_groups": [{**group, "params": list(range(self.count))}]}
        for key, value in inner.items():
            whole = (_gather(self.zero, 0, value) if torch.is_tensor(value) and value.shape == flat.shape
                     else [value.clone() if torch.is_tensor(value) else value] * self.count)
            for i, v in enumerate(whole):
                out["state"][i][key] = v
        scaler = getattr(self.zero, "loss_scaler", None)
        if getattr(scaler, "dynamic", False):
            out["loss_scaler"] = {k: getattr(scaler, k) for k in
                                  ("cur_scale", "cur_iter", "last_overflow_iter", "cur_hysteresis")}
        return out

    def load_state_dict(self, saved: dict) -> None:
        flat, state = self.flats[0], saved["state"]
        group = {**saved["param_groups"][0], "params": [0]}
        packed: dict = {}
        if state:
            if sorted(state) != list(range(self.count)):
                raise ValueError(f"optimizer state for {len(state)} parameters, the network has {self.count}")
            for key, value in state[0].items():
                if torch.is_tensor(value) and value.dim() > 0:  # a moment, per parameter
                    part = torch.zeros_like(flat)
                    _scatter(self.zero, 0, [state[i][key].to(flat) for i in range(self.count)], part)
                    packed[key] = part
                else:
                    packed[key] = value
        # torch's own loader: it puts step counters where this Adam kind wants them.
        self.inner.load_state_dict({"state": {0: packed} if packed else {}, "param_groups": [group]})
        scaler = getattr(self.zero, "loss_scaler", None)
        for k, v in (saved.get("loss_scaler") or {}).items():
            if getattr(scaler, "dynamic", False):
                setattr(scaler, k, v)
