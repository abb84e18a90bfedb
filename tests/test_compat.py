"""Every private library API the project uses, exercised on real objects (wgan_dist/compat.py).

If a new torch, webdataset or accelerate release renames or changes one of them, a test here
fails by name; and a shim whose API is gone raises CompatError instead of falling back.
"""
from __future__ import annotations

import random

import pytest
import torch

from wgan_dist import compat


def test_fused_kernel_devices_include_cpu_and_cuda():
    devices = compat.fused_kernel_devices()
    assert "cuda" in devices and "cpu" in devices  # fused Adam on CPU since torch 2.4
    p = torch.nn.Parameter(torch.ones(3))
    torch.optim.Adam([p], fused=True)  # the optimizer agrees with the answer


def test_scaler_scale_is_a_device_tensor_after_the_first_scale():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    assert compat.scaler_scale(scaler) == 2.0**10  # before the first scale(): the float
    scaler.scale(torch.ones(()))
    scale = compat.scaler_scale(scaler)
    assert isinstance(scale, torch.Tensor) and scale.item() == 2.0**10


@pytest.mark.parametrize("flag,moves", [(1.0, False), (0.0, True)])
def test_fused_adam_skips_on_found_inf(flag, moves):
    p = torch.nn.Parameter(torch.ones(4))
    opt = torch.optim.Adam([p], lr=0.1, fused=True)
    p.grad = torch.full((4,), 0.5)
    opt.step()  # a first real step, so there is optimizer state to keep
    before, steps = p.detach().clone(), opt.state[p]["step"].clone()
    p.grad = torch.full((4,), 0.5)
    compat.step_unless_found_inf(opt, torch.tensor(flag))
    assert (not torch.equal(p.detach(), before)) == moves
    assert opt.state[p]["step"].item() == steps.item() + (1 if moves else 0)
    assert not hasattr(opt, "found_inf")  # no stale flag for the next step


def test_step_unless_found_inf_refuses_a_non_fused_optimizer():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.ones(1))])
    with pytest.raises(ValueError, match="fused=True"):
        compat.step_unless_found_inf(opt, torch.tensor(0.0))


def test_non_finite_check_flags_and_leaves_gradients():
    grads = [torch.ones(3), torch.tensor([1.0, float("nan")])]
    kept = [g.clone() for g in grads]
    found = torch.zeros(1)
    compat.non_finite_check_(grads[:1], found)
    assert found.item() == 0.0
    compat.non_finite_check_(grads, found)
    assert found.item() == 1.0
    assert torch.equal(grads[0], kept[0]) and torch.isnan(grads[1][1])


def test_foreach_lerp_is_lerp():
    a, b = [torch.zeros(3), torch.ones(2)], [torch.ones(3), torch.full((2,), 3.0)]
    compat.foreach_lerp_(a, b, 0.25)
    assert torch.allclose(a[0], torch.full((3,), 0.25)) and torch.allclose(a[1], torch.full((2,), 1.5))


def test_shuffle_samples_is_a_seeded_permutation():
    items = [{"i": i} for i in range(50)]
    one = [s["i"] for s in compat.shuffle_samples(iter(items), 10, 5, random.Random(3))]
    two = [s["i"] for s in compat.shuffle_samples(iter(items), 10, 5, random.Random(3))]
    assert one == two and sorted(one) == list(range(50)) and one != list(range(50))


def test_shutdown_loader_workers_joins_them_now():
    loader = torch.utils.data.DataLoader(list(range(64)), batch_size=4, num_workers=1)
    it = iter(loader)
    next(it)
    workers = list(it._workers)
    assert all(w.is_alive() for w in workers)
    compat.shutdown_loader_workers(it)
    assert not any(w.is_alive() for w in workers)
    compat.shutdown_loader_workers(iter(torch.utils.data.DataLoader([1, 2])))  # no workers: no-op


def test_reset_accelerator_state_allows_new_settings():
    from accelerate import Accelerator

    compat.reset_accelerator_state()
    assert Accelerator(cpu=True, mixed_precision="bf16").mixed_precision == "bf16"
    compat.reset_accelerator_state()
    assert Accelerator(cpu=True, mixed_precision="no").mixed_precision == "no"
    compat.reset_accelerator_state()


def test_a_missing_private_api_fails_loudly(monkeypatch):
    monkeypatch.delattr(torch, "_foreach_lerp_")
    with pytest.raises(compat.CompatError, match="torch._foreach_lerp_ .*checked with"):
        compat.foreach_lerp_([torch.zeros(1)], [torch.ones(1)], 0.5)
    monkeypatch.delattr(torch.amp.GradScaler, "_get_scale_async")
    with pytest.raises(compat.CompatError, match="_get_scale_async"):
        compat.scaler_scale(torch.amp.GradScaler("cpu"))
    import webdataset.filters

    monkeypatch.delattr(webdataset.filters, "_shuffle")
    with pytest.raises(compat.CompatError, match="webdataset.filters._shuffle"):
        compat.shuffle_samples(iter([]), 1, 1, random.Random(0))


def test_flop_counter_counts_a_matmul_and_the_penalty_double_backward():
    a, b = torch.randn(8, 16), torch.randn(16, 4)
    with compat.flop_counter() as fc:
        a @ b
    assert fc.flops == 2 * 8 * 16 * 4
    # Through autograd.grad(create_graph=True) and a second backward, as the penalty does.
    w = torch.randn(16, 4, requires_grad=True)
    x = torch.randn(8, 16, requires_grad=True)
    with compat.flop_counter() as fc:
        (g,) = torch.autograd.grad((x @ w).square().sum(), x, create_graph=True)
        g.square().sum().backward()
    assert fc.flops > 3 * 2 * 8 * 16 * 4  # forward, two backward passes, their grads
