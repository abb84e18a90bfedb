"""Class-conditional models: shapes, the projection term, the auxiliary classifier, the penalty
with labels held fixed, exact resume, the per-class sample grid, and generation per class."""
from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch
import yaml
from wgan_dist.compat import reset_accelerator_state
from torch import nn

from conftest import PY, REPO, tiny_overrides
from test_train import assert_same_state, run_trainer
from wgan_dist.training import checkpoint as ckpt
from wgan_dist import generate
from wgan_dist.objective import losses
from wgan_dist.config import LossConfig, ModelConfig, load_config
from wgan_dist.nets import CriticBase, GeneratorBase, build_models
from wgan_dist.objective import critic_phase, generator_phase
from wgan_dist.training.trainer import Trainer

CLASSES = ["bicycle", "cup", "fish", "house", "star", "sun", "tree", "umbrella"]  # built-in set
# Conditional, both heads, the critic's classifier on fakes too, DiffAugment: every new draw.
COND = {"model.conditional": True, "model.cond": "both", "loss.ac_fake": True,
        "data.diffaug": "translation,cutout,color", "eval.num": 16, "eval.gp_visuals": False}


def cond_cfg(arch: str = "dcgan", cond: str = "both", k: int = 3) -> ModelConfig:
    return ModelConfig(arch=arch, latent_dim=16, g_width=8, d_width=8, max_channels=32,
                       conditional=True, cond=cond, num_classes=k)


# ------------------------------------------------------------------ models
@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
@pytest.mark.parametrize("resolution,channels", [(28, 1), (64, 3)])
@pytest.mark.parametrize("cond", ["projection", "acgan", "both"])
def test_conditional_shapes(arch, resolution, channels, cond):
    g, d = build_models(cond_cfg(arch, cond), resolution, channels)
    z, y = torch.randn(4, 16), torch.tensor([0, 1, 2, 0])
    x = g(z, y)
    assert x.shape == (4, channels, resolution, resolution)
    assert d(x, y).shape == (4,)
    if cond == "projection":
        with pytest.raises(ValueError, match="no auxiliary classifier"):
            d(x, y, logits=True)
    else:
        score, logits = d(x, y, logits=True)
        assert score.shape == (4,) and logits.shape == (4, 3)
    # The label changes the image (same z, other class).
    assert not torch.allclose(g.eval()(z, y), g(z, (y + 1) % 3))


def test_unconditional_models_are_unchanged_and_refuse_labels():
    g, d = build_models(ModelConfig(latent_dim=16, g_width=8, d_width=8), 28, 1)
    names = {n for n, _ in g.named_parameters()} | {n for n, _ in d.named_parameters()}
    assert not any("embed" in n or "classifier" in n for n in names)
    with pytest.raises(ValueError, match="unconditional; it takes no labels"):
        g(torch.randn(2, 16), torch.tensor([0, 1]))


class IdentityCritic(CriticBase):
    """phi(x) = x, so the heads can be checked by hand."""

    def __init__(self, num_classes: int, cond: str) -> None:
        super().__init__()
        self._init_heads(2, num_classes, cond)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_projection_term_by_hand():
    d = IdentityCritic(2, "projection")
    with torch.no_grad():
        d.head.weight.copy_(torch.tensor([[0.5, -1.0]]))
        d.head.bias.fill_(0.25)
        d.embed.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    x, y = torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([1, 0])
    # psi(phi(x)) = 0.5 x1 - x2 + 0.25  ->  -1.25, -2.25
    # <embed(y), phi(x)>: <(0, 2), (1, 2)> = 4 ; <(1, 0), (3, 4)> = 3
    assert torch.allclose(d(x, y), torch.tensor([2.75, 0.75]))
    # Without labels: the mean over classes, embedding (0.5, 1): -1.25 + 2.5 ; -2.25 + 5.5
    assert torch.allclose(d(x), torch.tensor([1.25, 3.25]))


def test_projection_in_a_real_critic_is_the_embedding_difference():
    _, d = build_models(cond_cfg(cond="projection"), 28, 1)
    x = torch.randn(3, 1, 28, 28)
    a, b = torch.tensor([0, 1, 2]), torch.tensor([2, 0, 1])
    phi = d.features(x)
    expected = ((d.embed(a) - d.embed(b)) * phi).sum(1)
    assert torch.allclose(d(x, a) - d(x, b), expected, atol=1e-5)


# ------------------------------------------------------------------ objective
class ToyCritic(CriticBase):
    def __init__(self, cond: str = "acgan") -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(2, 32), nn.LeakyReLU(0.2))
        self._init_heads(32, 2, cond)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)


class ToyGenerator(GeneratorBase):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(self._init_condition(4, 2), 2)

    def forward(self, z, y=None):
        return self.fc(self._input(z, y))


def test_auxiliary_classifier_loss_falls_on_a_separable_problem():
    torch.manual_seed(0)
    d, g = ToyCritic(), ToyGenerator()
    cfg = LossConfig(ac_weight=1.0, ac_fake=True)
    opt = torch.optim.Adam(d.parameters(), lr=1e-2)
    history = []
    for _ in range(120):
        y_real = torch.randint(0, 2, (64,))
        real = torch.stack([y_real.float() * 4 - 2, torch.zeros(64)], 1) + 0.3 * torch.randn(64, 2)
        y_fake = torch.randint(0, 2, (64,))
        fake = g(torch.randn(64, 4), y_fake)
        loss, stats = critic_phase(d, real, fake, torch.rand(64), cfg, y_real=y_real,
                                   y_fake=y_fake, classify=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append((float(stats["ac_real"]), float(stats["ac_accuracy"])))
    assert history[0][0] > 0.5 and history[-1][0] < 0.1 and history[-1][1] == 1.0
    assert "ac_fake" in stats

    # The generator's term: with the score head zeroed only lambda_AC * CE(requested) is left,
    # and training the generator on it makes its fakes classifiable as the requested class.
    d.requires_grad_(False)
    with torch.no_grad():
        d.head.weight.zero_()
    opt_g = torch.optim.Adam(g.parameters(), lr=5e-2)
    ce = []
    for _ in range(60):
        y = torch.randint(0, 2, (64,))
        loss, stats = generator_phase(d, g(torch.randn(64, 4), y), cfg, y=y, classify=True)
        assert torch.allclose(loss, stats["generator_loss"] + stats["ac_generator"])
        opt_g.zero_grad()
        loss.backward()
        opt_g.step()
        ce.append(float(stats["ac_generator"]))
    assert ce[-1] < 0.25 * ce[0]


def test_penalty_holds_the_real_labels_fixed():
    torch.manual_seed(0)
    _, d = build_models(cond_cfg(cond="projection"), 28, 1)
    real, fake = torch.rand(4, 1, 28, 28) * 2 - 1, torch.rand(4, 1, 28, 28) * 2 - 1
    y_real, y_fake, alpha = torch.tensor([0, 1, 2, 0]), torch.tensor([2, 2, 1, 1]), torch.rand(4)
    _, stats = critic_phase(d, real, fake, alpha, LossConfig(), y_real=y_real, y_fake=y_fake)
    norms = losses.penalty_gradient_norms(lambda x: d(x, y_real), losses.interpolate(real, fake, alpha))
    assert torch.allclose(stats["gradient_penalty"], losses.gradient_penalty(norms, 10.0))
    other = losses.penalty_gradient_norms(lambda x: d(x, y_fake), losses.interpolate(real, fake, alpha))
    assert not torch.allclose(norms, other)  # the labels matter, and the real ones are used


# ------------------------------------------------------------------ trainer
def test_conditional_run_resumes_exactly(builtin_shards, tmp_path):
    extra = {**COND, "log.ckpt_every": 100}
    run_trainer(tiny_overrides(builtin_shards, tmp_path / "full", **extra))
    run_trainer(tiny_overrides(builtin_shards, tmp_path / "split", **extra, **{"train.steps": 3}))
    run_trainer(tiny_overrides(builtin_shards, tmp_path / "split", **extra), resume="latest")
    a, b = ckpt.load_checkpoint(tmp_path / "full"), ckpt.load_checkpoint(tmp_path / "split")
    assert a["step"] == b["step"] == 6
    assert_same_state(a, b)
    assert a["config"]["model"]["num_classes"] == len(CLASSES) and a["class_names"] == CLASSES
    assert "classifier.weight" in a["D"] and "embed.weight" in a["D"] and "embed.weight" in a["G"]


def test_conditional_needs_labelled_shards(tmp_path):
    import numpy as np
    from PIL import Image

    from wgan_dist.data.write import write_shards

    folder = tmp_path / "flat"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (28, 28), dtype=np.uint8)).save(folder / f"{i}.png")
    write_shards([str(folder)], str(tmp_path / "shards"), resolution=28, channels=1, progress=False)
    reset_accelerator_state()
    with pytest.raises(ValueError, match="model.conditional=true needs labelled shards"):
        Trainer(load_config(None, tiny_overrides(tmp_path / "shards", tmp_path / "r", **COND)))


@pytest.fixture(scope="module")
def cond_run(builtin_shards, tmp_path_factory):
    """A finished 6-step conditional run: its trainer and run directory."""
    run = tmp_path_factory.mktemp("cond") / "run"
    trainer = run_trainer(tiny_overrides(builtin_shards, run, **COND))
    return trainer, run


def test_sample_grid_has_one_row_per_class(cond_run):
    from PIL import Image

    trainer, run = cond_run
    k, cols = len(CLASSES), 16 // len(CLASSES)  # log.grid_size=16 in tiny_overrides
    assert trainer.grid.cols == cols
    assert torch.equal(trainer.grid.y.cpu(), torch.arange(k).repeat_interleave(cols))
    assert torch.equal(trainer.grid.z[0], trainer.grid.z[cols])  # same latents in every row
    w, h = Image.open(run / "samples" / "step-00000006.png").size
    assert (w, h) == (cols * 30 + 2, k * 30 + 2)  # 28 px tiles, make_grid padding 2
    # the run's config.yaml is the config as run: class count from the manifest
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["num_classes"] == k


def test_generate_per_class(cond_run, tmp_path):
    from PIL import Image

    _, run = cond_run
    out = tmp_path / "gen"
    r = subprocess.run([PY, "-m", "wgan_dist.generate", "--checkpoint", str(run), "--class", "cup",
                        "--class", "fish,star", "--num", "3", "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["cup", "fish", "star"]
    assert len(list((out / "fish").glob("*.png"))) == 3
    assert Image.open(out / "grid.png").size == (3 * 30 + 2, 3 * 30 + 2)  # one row per class

    assert generate.main(["--checkpoint", str(run), "--per-class-grid", "--num", "4",
                          "--out", str(out)]) == 0
    assert Image.open(out / "per_class_grid.png").size == (4 * 30 + 2, len(CLASSES) * 30 + 2)

    # The Python API: labels and class names come from the checkpoint.
    g, meta = generate.load_generator(run)
    assert meta["class_names"] == CLASSES and g.num_classes == len(CLASSES)
    ids = generate.class_ids(["sun", "cup,tree"], meta["class_names"])
    assert ids == [5, 1, 6]
    imgs = generate.class_grid(g, ids, cols=2, seed=1)
    assert imgs.shape == (6, 1, 28, 28) and torch.equal(imgs, generate.class_grid(g, ids, 2, seed=1))


def test_generate_unknown_class_is_a_clear_error(cond_run, tmp_path, capsys):
    _, run = cond_run
    assert generate.main(["--checkpoint", str(run), "--class", "cup,zebra", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown class 'zebra'; known classes: " + ", ".join(CLASSES) in err


def test_generate_class_on_an_unconditional_checkpoint_is_refused(builtin_shards, tmp_path, capsys):
    run = tmp_path / "u"
    run_trainer(tiny_overrides(builtin_shards, run, **{"train.steps": 1, "eval.num": 16,
                                                       "eval.gp_visuals": False}))
    assert generate.main(["--checkpoint", str(run), "--class", "cup", "--out", str(tmp_path)]) == 2
    assert "unconditional generator" in capsys.readouterr().err


def test_evaluate_scores_the_requested_classes(cond_run, tmp_path):
    """evaluate on a conditional checkpoint asks for the classes in turn and reports the
    domain classifier's accuracy on them."""
    _, run = cond_run
    out = tmp_path / "m.json"
    env = {**os.environ, "WGAN_DIST_CACHE": str(tmp_path / "cache")}
    r = subprocess.run([PY, "-m", "wgan_dist.evaluate", "--checkpoint", str(run), "--num", "40",
                        "--classifier", "--classifier-steps", "20", "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    row = json.loads(out.read_text())
    assert 0.0 <= row["cls_acc"] <= 1.0 and row["cls_real_classes"] == len(CLASSES)
