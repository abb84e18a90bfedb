"""The official WGAN-GP 64x64 recipe, re-implemented plainly in PyTorch from its description
(Gulrajani et al. 2017, ``gan_64x64.py`` of improved_wgan_training, MODE wgan-gp): the
reference that ``bench_photos.py`` measures ours against.

Recipe: DIM 64, latent 128, batch 64, 5 critic steps per generator step, lambda 10, Adam 1e-4
betas (0, 0.9) for both networks, no EMA, images in [-1, 1]. The critic normalises with layer
norm over (C, H, W) (the recipe's choice for wgan-gp; the generator keeps BatchNorm).

* ``dcgan``: G: linear -> 4x4x8DIM, BN, ReLU, then four 5x5 stride-2 transposed convolutions
  (8DIM -> 4DIM -> 2DIM -> DIM -> 3) with BN + ReLU between them, tanh. D: 5x5 stride-2
  convolutions 3 -> DIM (LeakyReLU 0.2), DIM -> 2DIM -> 4DIM -> 8DIM (layer norm,
  LeakyReLU), linear on the 4x4x8DIM map.
* ``resnet`` (the recipe's "good" networks, its default): G: linear -> 4x4x8DIM, four
  upsampling residual blocks 8DIM -> 8DIM -> 4DIM -> 2DIM -> DIM (BN, ReLU, nearest x2 and
  3x3 conv, BN, ReLU, 3x3 conv; shortcut: x2 and 1x1 conv), BN, ReLU, 3x3 conv to RGB, tanh.
  D: 3x3 conv 3 -> DIM, four downsampling residual blocks DIM -> 2DIM -> 4DIM -> 8DIM -> 8DIM
  (layer norm, ReLU, 3x3 conv, layer norm, ReLU, 3x3 conv then 2x2 mean pool; shortcut:
  mean pool then 1x1 conv), linear on the 4x4x8DIM map.

Initialisation is PyTorch's default, not tflib's (a difference in scale only).
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

DIM, LATENT, BATCH, N_CRITIC, LAMBDA, LR, BETAS = 64, 128, 64, 5, 10.0, 1e-4, (0.0, 0.9)


def _ln(ch: int) -> nn.Module:
    return nn.GroupNorm(1, ch)  # layer norm over (C, H, W) with a per-channel scale and shift


class DCGANGenerator(nn.Module):
    def __init__(self, dim: int = DIM, latent: int = LATENT) -> None:
        super().__init__()
        self.dim = dim
        self.fc = nn.Sequential(nn.Linear(latent, 4 * 4 * 8 * dim), nn.BatchNorm1d(4 * 4 * 8 * dim), nn.ReLU())
        layers: list[nn.Module] = []
        for cin, cout in ((8 * dim, 4 * dim), (4 * dim, 2 * dim), (2 * dim, dim)):
            layers += [nn.ConvTranspose2d(cin, cout, 5, 2, 2, output_padding=1), nn.BatchNorm2d(cout), nn.ReLU()]
        layers += [nn.ConvTranspose2d(dim, 3, 5, 2, 2, output_padding=1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(self.fc(z).view(-1, 8 * self.dim, 4, 4))


class DCGANCritic(nn.Module):
    def __init__(self, dim: int = DIM) -> None:
        super().__init__()
        act = lambda: nn.LeakyReLU(0.2)  # noqa: E731
        self.net = nn.Sequential(
            nn.Conv2d(3, dim, 5, 2, 2), act(),
            nn.Conv2d(dim, 2 * dim, 5, 2, 2), _ln(2 * dim), act(),
            nn.Conv2d(2 * dim, 4 * dim, 5, 2, 2), _ln(4 * dim), act(),
            nn.Conv2d(4 * dim, 8 * dim, 5, 2, 2), _ln(8 * dim), act(),
            nn.Flatten(), nn.Linear(4 * 4 * 8 * dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


class _Up(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.short = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = lambda t: F.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
        h = self.conv1(up(F.relu(self.bn1(x))))
        return self.short(up(x)) + self.conv2(F.relu(self.bn2(h)))


class _Down(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.ln1, self.conv1 = _ln(cin), nn.Conv2d(cin, cin, 3, padding=1, bias=False)
        self.ln2, self.conv2 = _ln(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.short = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.relu(self.ln1(x)))
        h = F.avg_pool2d(self.conv2(F.relu(self.ln2(h))), 2)
        return self.short(F.avg_pool2d(x, 2)) + h


class ResNetGenerator(nn.Module):
    def __init__(self, dim: int = DIM, latent: int = LATENT) -> None:
        super().__init__()
        self.dim = dim
        self.fc = nn.Linear(latent, 4 * 4 * 8 * dim)
        chans = (8 * dim, 8 * dim, 4 * dim, 2 * dim, dim)
        self.blocks = nn.Sequential(*[_Up(a, b) for a, b in zip(chans, chans[1:])])
        self.out = nn.Sequential(nn.BatchNorm2d(dim), nn.ReLU(), nn.Conv2d(dim, 3, 3, padding=1), nn.Tanh())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(self.fc(z).view(-1, 8 * self.dim, 4, 4)))


class ResNetCritic(nn.Module):
    def __init__(self, dim: int = DIM) -> None:
        super().__init__()
        chans = (dim, 2 * dim, 4 * dim, 8 * dim, 8 * dim)
        self.first = nn.Conv2d(3, dim, 3, padding=1)
        self.blocks = nn.Sequential(*[_Down(a, b) for a, b in zip(chans, chans[1:])])
        self.fc = nn.Linear(4 * 4 * 8 * dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.blocks(self.first(x)).flatten(1)).squeeze(1)


NETS = {"dcgan": (DCGANGenerator, DCGANCritic), "resnet": (ResNetGenerator, ResNetCritic)}


def train_reference(arch: str, real: torch.Tensor, kimg: float, cpu_budget_s: float,
                    snapshots: int = 10, seed: int = 0, dim: int = DIM, log=print) -> list[dict]:
    """The recipe's loop on ``real`` (float [-1, 1], N x 3 x 64 x 64) until ``kimg`` real
    images have gone through the critic or ``cpu_budget_s`` CPU seconds (this process) are
    spent, whichever comes first. Returns ``snapshots`` generator snapshots taken at equal
    steps of CPU time (and the last one), each with the images seen and the CPU seconds."""
    torch.manual_seed(seed)
    g_cls, d_cls = NETS[arch]
    g, d = g_cls(dim), d_cls(dim)
    opt_g = torch.optim.Adam(g.parameters(), lr=LR, betas=BETAS)
    opt_d = torch.optim.Adam(d.parameters(), lr=LR, betas=BETAS)
    gen = torch.Generator().manual_seed(seed)
    max_iters = max(1, round(kimg * 1000 / (BATCH * N_CRITIC)))
    snaps: list[dict] = []
    t0 = time.process_time()
    next_mark, it = cpu_budget_s / snapshots, 0

    def snap() -> None:
        snaps.append({"kimg": it * BATCH * N_CRITIC / 1000, "cpu_s": time.process_time() - t0,
                      "state": {k: v.clone() for k, v in g.state_dict().items()}})

    while it < max_iters and time.process_time() - t0 < cpu_budget_s:
        for _ in range(N_CRITIC):
            x = real[torch.randint(0, len(real), (BATCH,), generator=gen)]
            with torch.no_grad():
                fake = g(torch.randn(BATCH, LATENT, generator=gen))
            eps = torch.rand(BATCH, 1, 1, 1, generator=gen)
            xh = (eps * x + (1 - eps) * fake).requires_grad_(True)
            (grad,) = torch.autograd.grad(d(xh).sum(), xh, create_graph=True)
            gp = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
            loss_d = d(fake).mean() - d(x).mean() + LAMBDA * gp
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
        d.requires_grad_(False)
        loss_g = -d(g(torch.randn(BATCH, LATENT, generator=gen))).mean()
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        d.requires_grad_(True)
        it += 1
        if time.process_time() - t0 >= next_mark:
            snap()
            log(f"  reference {arch}: {it} iterations, {snaps[-1]['kimg']:.1f} kimg, "
                f"{snaps[-1]['cpu_s']:.0f} CPU s")
            next_mark += cpu_budget_s / snapshots
    if not snaps or snaps[-1]["kimg"] != it * BATCH * N_CRITIC / 1000:
        snap()
    return snaps


def generate(arch: str, state: dict, n: int, seed: int = 1, dim: int = DIM) -> torch.Tensor:
    """``n`` samples of a snapshot, in batches of BATCH with BatchNorm on batch statistics,
    as the recipe's own sampling does (its batch norm always normalises by the batch)."""
    g = NETS[arch][0](dim)
    g.load_state_dict(state)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        g.train()
        return torch.cat([g(torch.randn(BATCH, LATENT, generator=gen)) for _ in range(0, n, BATCH)])[:n]
