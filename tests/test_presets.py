"""Presets and architectures: every configs/*.yaml parses, says what it reproduces, and trains
two steps on data of its shape; the architecture registry and the residual networks."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from wgan_dist.compat import reset_accelerator_state
from torch import nn

from conftest import tiny_overrides
from wgan_dist.training import checkpoint as ckpt
from wgan_dist.config import CONFIG_DIR, ConfigError, ModelConfig, load_config
from wgan_dist.nets import ARCHITECTURES, SUPPORTED_RESOLUTIONS, build_models
from wgan_dist.nets.resnet import ResNetCritic, ResNetGenerator
from wgan_dist.training.trainer import Trainer

PRESETS = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
OURS = ["animal_faces_cond64", "celeba128", "celeba64", "dcgan_quickdraw", "quickdraw_bicycle",
        "quickdraw_cond", "small_data64"]


def test_presets_exist_and_say_what_they_reproduce():
    assert set(OURS) <= set(PRESETS)
    for name in OURS:
        text = (CONFIG_DIR / f"{name}.yaml").read_text()
        header = [line for line in text.splitlines() if line.startswith("#")]
        assert text.startswith("#") and "seed" in " ".join(header).lower(), name


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_parses(name):
    cfg = load_config(name)
    assert cfg.name == name


def test_preset_contents():
    qd = load_config("quickdraw_bicycle")
    assert (qd.data.resolution, qd.data.channels, qd.model.latent_dim, qd.train.batch_size) == (28, 1, 100, 64)
    assert qd.data.shards == "shards/quickdraw_bicycle" and not qd.model.conditional
    assert load_config("quickdraw_cond").model.conditional
    dc = load_config("dcgan_quickdraw")
    assert (dc.loss.kind, dc.loss.gp_weight, dc.optim.n_critic) == ("ns", 0.0, 1)
    assert (dc.optim.lr_g, dc.optim.lr_d, dc.optim.beta1, dc.optim.beta2) == (2e-4, 2e-4, 0.5, 0.999)
    af = load_config("animal_faces_cond64")
    assert (af.data.resolution, af.data.channels, af.model.conditional, af.model.cond) == (64, 3, True, "acgan")
    assert af.loss.ac_weight == 1.0
    assert load_config("small_data64").data.diffaug == "translation,cutout,color"
    assert load_config("small_data64").data.resolution == 64
    for name, res, batch in (("celeba64", 64, 32), ("celeba128", 128, 128)):
        c = load_config(name)
        assert (c.data.resolution, c.data.channels, c.model.latent_dim, c.train.batch_size, c.data.hflip) == \
            (res, 3, 100, batch, True)


# ------------------------------------------------------------------ two steps of each preset
def _rgb_shards(root: Path, resolution: int) -> Path:
    """12 random RGB images in class folders cat/dog/wild, written as a real shard set."""
    from PIL import Image

    from wgan_dist.data.write import write_shards

    rng = np.random.default_rng(resolution)
    for cls in ("cat", "dog", "wild"):
        (root / "images" / cls).mkdir(parents=True)
        for i in range(4):
            arr = rng.integers(0, 255, (resolution + 8, resolution + 8, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / "images" / cls / f"{i}.png")
    write_shards([str(root / "images")], str(root / "shards"), resolution=resolution, channels=3,
                 per_shard=6, progress=False)
    return root / "shards"


@pytest.fixture(scope="module")
def shards_for(builtin_shards, tmp_path_factory):
    made: dict[tuple[int, int], Path] = {(28, 1): builtin_shards}

    def get(resolution: int, channels: int) -> Path:
        if (resolution, channels) not in made:
            assert channels == 3, "grayscale presets are 28 px (the built-in set)"
            made[resolution, channels] = _rgb_shards(tmp_path_factory.mktemp(f"rgb{resolution}"), resolution)
        return made[resolution, channels]
    return get


@pytest.mark.parametrize("name,extra", [(p, {}) for p in OURS] + [("quickdraw_cond", {"model.arch": "resnet"})],
                         ids=OURS + ["quickdraw_cond-resnet"])
def test_preset_trains_two_steps(name, extra, shards_for, tmp_path):
    preset = load_config(name)
    shards = shards_for(preset.data.resolution, preset.data.channels)
    overrides = tiny_overrides(shards, tmp_path / "run", **{
        "model.g_width": 4, "model.d_width": 4, "model.latent_dim": preset.model.latent_dim,
        "train.batch_size": 4, "train.steps": 2, "optim.n_critic": min(preset.optim.n_critic, 2),
        "data.shuffle_buffer": 12, "log.grid_size": 6, "eval.num": 8, "eval.gp_visuals": False,
        **extra})
    reset_accelerator_state()
    trainer = Trainer(load_config(name, overrides))
    stats = trainer.train()
    trainer.close()
    assert trainer.step == 2 and np.isfinite(stats["critic_loss"])
    state = ckpt.load_checkpoint(tmp_path / "run")
    assert state["config"]["name"] == name
    if preset.model.conditional:
        assert state["config"]["model"]["num_classes"] == len(state["class_names"]) > 1
    if preset.data.diffaug:
        assert trainer.draws.augment is not None and trainer.draws.augment.policy == ("color", "translation", "cutout")


# ------------------------------------------------------------------ architectures
def test_architecture_registry_names_its_entries():
    assert list(ARCHITECTURES) == ["dcgan", "resnet"]
    with pytest.raises(ConfigError, match="model.arch='stylegan' unknown; available: dcgan, resnet"):
        load_config(None, ["model.arch=stylegan"])
    with pytest.raises(ValueError, match="architecture 'vgg' unknown; available: dcgan, resnet"):
        build_models(ModelConfig(arch="vgg"), 28, 1)


@pytest.mark.parametrize("resolution", [r for r in SUPPORTED_RESOLUTIONS if r <= 128])
@pytest.mark.parametrize("channels", [1, 3])
def test_resnet_shapes(resolution, channels):
    g, d = build_models(ModelConfig(arch="resnet", latent_dim=16, g_width=4, d_width=4), resolution, channels)
    assert isinstance(g, ResNetGenerator) and isinstance(d, ResNetCritic)
    x = g(torch.randn(3, 16))
    assert x.shape == (3, channels, resolution, resolution) and x.abs().max() <= 1
    assert d(x).shape == (3,)


@pytest.mark.parametrize("norm", ["layer", "none"])
def test_resnet_critic_has_no_batchnorm_and_is_per_sample(norm):
    d = ResNetCritic(32, 3, width=8, norm=norm)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in d.modules())
    x = torch.randn(4, 3, 32, 32)
    alone = torch.stack([d(x[i:i + 1])[0] for i in range(4)])
    assert torch.allclose(d(x), alone, atol=1e-5)
    g = ResNetGenerator(32, 3, 16, width=8)
    assert any(isinstance(m, nn.BatchNorm2d) for m in g.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in ResNetGenerator(32, 3, 16, 8, norm="none").modules())
