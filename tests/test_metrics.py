"""Tests for wgan_dist.metrics: FID/KID, SWD, domain classifier, collapse alarm, GP visuals.

Everything runs on the CPU with small stand-ins (a fixed random conv net instead of
Inception, 28-32 px toy images), so the file stays well under a minute on 2 cores.
"""
from __future__ import annotations

import hashlib
import io
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from wgan_dist import metrics
from wgan_dist.metrics import classifier as clf_mod
from wgan_dist.metrics import fid as fid_mod

# Small SWD settings for speed; the defaults (ProGAN's) are exercised on the level layout only.
SWD_FAST = dict(n_patches=64, n_proj=128, repeats=2)
# A tiny, briefly trained domain classifier: enough for the separable toy set.
CLF_SETTINGS = dict(steps=60, width=8, batch_size=32)


# ----------------------------------------------------------------------------- data helpers
def blobs(n: int, size: int = 32, c: int = 3, seed: int = 0) -> torch.Tensor:
    """Smooth images: one coloured Gaussian blob per image, in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    cy, cx = torch.rand(n, 1, 1, generator=g) * size, torch.rand(n, 1, 1, generator=g) * size
    r = 2 + torch.rand(n, 1, 1, generator=g) * size / 6
    img = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r ** 2))
    col = torch.rand(n, c, 1, 1, generator=g)
    return (img[:, None] * col * 2 - 1).clamp(-1, 1)


def noise(n: int, size: int = 32, c: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


K_TOY = 4
_CORNERS = [(3, 3), (3, 19), (19, 3), (19, 19)]


def toy_squares(labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """28x28 grayscale: class k = a bright 6x6 square near corner k, jittered, light noise."""
    g = torch.Generator().manual_seed(seed)
    n = labels.shape[0]
    x = torch.full((n, 1, 28, 28), -1.0) + 0.1 * torch.rand(n, 1, 28, 28, generator=g)
    jitter = torch.randint(-1, 2, (n, 2), generator=g)
    for i, k in enumerate(labels.tolist()):
        y0, x0 = _CORNERS[k][0] + int(jitter[i, 0]), _CORNERS[k][1] + int(jitter[i, 1])
        x[i, :, y0:y0 + 6, x0:x0 + 6] = 1.0
    return x.clamp(-1, 1)


def write_shards(root, images: torch.Tensor, labels: torch.Tensor | None, encoding: str = "png",
                 per_shard: int = 100) -> None:
    """A wgan_dist-shards/1 set written with webdataset.TarWriter, as the spec describes."""
    import webdataset as wds
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    u8 = ((images + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    c, res = images.shape[1], images.shape[-1]
    shards = []
    for s in range(math.ceil(len(u8) / per_shard)):
        name = f"shard-{s:06d}.tar"
        with wds.TarWriter(str(root / name)) as w:
            for i in range(s * per_shard, min((s + 1) * per_shard, len(u8))):
                sample = {"__key__": f"{i:09d}", "src": f"toy#{i}".encode()}
                if encoding == "png":
                    buf = io.BytesIO()
                    Image.fromarray(u8[i, :, :, 0] if c == 1 else u8[i]).save(buf, format="PNG")
                    sample["png"] = buf.getvalue()
                else:
                    sample["u8"] = u8[i].tobytes()
                if labels is not None:
                    sample["cls"] = str(int(labels[i])).encode()
                w.write(sample)
        digest = hashlib.sha256((root / name).read_bytes()).hexdigest()
        shards.append({"name": name, "count": min(per_shard, len(u8) - s * per_shard), "sha256": digest})
    names = [f"c{k}" for k in range(K_TOY)] if labels is not None else []
    manifest = {
        "format": "wgan_dist-shards/1", "resolution": res, "channels": c,
        "encoding": "png" if encoding == "png" else "raw", "jpeg_quality": None,
        "labelled": labels is not None, "class_names": names, "inputs": len(u8), "total": len(u8),
        "per_class": {}, "shards": shards, "skipped": [], "source": {"kind": "builtin", "paths": []},
        "seed": 0, "created": "2024-01-01T00:00:00Z",
    }
    (root / "manifest.json").write_text(json.dumps(manifest))


class RandomConvFeatures(nn.Module):
    """A fixed random conv net: a cheap, deterministic stand-in for Inception."""

    def __init__(self, c: int = 3, dim: int = 16) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(123)
        self.c1, self.c2 = nn.Conv2d(c, 8, 3, stride=2), nn.Conv2d(8, dim, 3, stride=2)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.c2(torch.tanh(self.c1(x)))).mean(dim=(2, 3))


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a shared 2-core box OpenMP's spinning threads made the tiny
    classifier's training 5-20x slower than a single thread under load."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def toy_shards(tmp_path_factory):
    labels = torch.arange(320) % K_TOY
    labels = labels[torch.randperm(320, generator=torch.Generator().manual_seed(0))]
    root = tmp_path_factory.mktemp("shards") / "toy"
    write_shards(root, toy_squares(labels, seed=0), labels)
    return root, labels


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("clf_cache")


@pytest.fixture(scope="module")
def trained_clf(toy_shards, cache_dir):
    root, _ = toy_shards
    return metrics.get_or_train_classifier(root, **CLF_SETTINGS, cache_dir=cache_dir)


# ----------------------------------------------------------------------------- FID / KID
def test_fid_self_zero_and_agrees_with_scipy():
    ext = RandomConvFeatures()
    real, fake = blobs(200, 16, seed=0), noise(200, 16, seed=1)
    f_real = fid_mod.extract_features(ext, real)
    f_fake = fid_mod.extract_features(ext, fake)
    scale = float(np.trace(np.cov(f_real.numpy(), rowvar=False)))

    kid = dict(kid_subsets=20)
    same = metrics.compute_fid_kid(real, real, ext, **kid)
    assert abs(same["fid"]) < 1e-3 * scale

    diff = metrics.compute_fid_kid(real, fake, ext, **kid)
    direct = metrics.fid_from_features(f_real, f_fake)
    assert diff["fid"] == pytest.approx(direct, rel=1e-3)
    assert diff["fid"] > 100 * max(abs(same["fid"]), 1e-6 * scale)
    # KID is an unbiased estimate, so "identical" means ~0 up to a small (signed) bias.
    assert diff["kid_mean"] > 0 and abs(same["kid_mean"]) < 0.01 * diff["kid_mean"]

    # Two draws of the same distribution are far closer than blobs vs noise.
    other = metrics.compute_fid_kid(real, blobs(200, 16, seed=7), ext, **kid)
    assert diff["fid"] > 10 * other["fid"] and diff["kid_mean"] > 10 * other["kid_mean"]


def test_feature_fid_batches_reset_and_determinism():
    ext = RandomConvFeatures()
    real, fake = blobs(120, 16, seed=0), blobs(120, 16, seed=3)
    m = metrics.FeatureFID(ext, kid_subset_size=50, kid_subsets=10)
    for i in range(0, 120, 40):  # batched accumulation == one shot
        m.update(real[i:i + 40], real=True)
        m.update(fake[i:i + 40], real=False)
    r1 = m.compute()
    assert r1 == m.compute()  # KID subsets are seeded
    one_shot = metrics.compute_fid_kid(real, fake, ext, kid_subset_size=50, kid_subsets=10)
    assert r1["fid"] == pytest.approx(one_shot["fid"], rel=1e-6)
    m.reset(keep_real=True)
    m.update(real, real=False)
    assert abs(m.compute()["fid"]) < 1e-6


def test_frechet_distance_closed_form():
    # 1-D Gaussians: (m1 - m2)^2 + (s1 - s2)^2.
    assert metrics.frechet_distance([0.0], [[4.0]], [3.0], [[1.0]]) == pytest.approx(9 + 1)


def test_missing_inception_weights_message(tmp_path, monkeypatch):
    missing = tmp_path / "nope" / fid_mod.INCEPTION_FILE
    with pytest.raises(FileNotFoundError) as exc:
        metrics.FeatureFID("inception", inception_weights=missing)
    msg = str(exc.value)
    assert str(missing) in msg and "Nothing is downloaded" in msg
    assert fid_mod.INCEPTION_ENV in msg and "inception_weights=" in msg

    monkeypatch.delenv(fid_mod.INCEPTION_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match=fid_mod.INCEPTION_ENV):
        metrics.FeatureFID("inception")
    monkeypatch.setenv(fid_mod.INCEPTION_ENV, str(missing))
    with pytest.raises(FileNotFoundError, match="looked for"):
        metrics.FeatureFID("inception")


def test_inception_without_torch_fidelity_says_how_to_install(tmp_path):
    pytest.importorskip("torchmetrics")
    try:
        import torch_fidelity  # noqa: F401
        pytest.skip("torch-fidelity is installed")
    except ImportError:
        pass
    weights = tmp_path / fid_mod.INCEPTION_FILE
    weights.write_bytes(b"placeholder")
    with pytest.raises(ImportError, match="pip install torch-fidelity"):
        metrics.FeatureFID("inception", inception_weights=weights)


def test_inception_wrapper_preprocessing(tmp_path, monkeypatch):
    """Without torch-fidelity or real weights: stub the network, check what reaches it."""
    import sys
    import types

    import torchmetrics.image.fid as tm_fid

    seen = {}

    class StubInception(nn.Module):
        def __init__(self, name, features_list, feature_extractor_weights_path=None, antialias=True):
            super().__init__()
            seen.update(path=feature_extractor_weights_path, antialias=antialias, features=features_list)

        def forward(self, x):
            seen["input"] = x
            return x.float().mean(dim=(2, 3))  # (N, 3) "features"

    monkeypatch.setitem(sys.modules, "torch_fidelity", types.ModuleType("torch_fidelity"))
    monkeypatch.setattr(tm_fid, "NoTrainInceptionV3", StubInception)
    weights = tmp_path / fid_mod.INCEPTION_FILE
    weights.write_bytes(b"placeholder")
    monkeypatch.setenv(fid_mod.INCEPTION_ENV, str(weights))
    fid_mod._cached_inception.cache_clear()
    try:
        m = metrics.FeatureFID("inception", kid_subsets=2)
        gray = torch.linspace(-1, 1, 2 * 8 * 8).view(2, 1, 8, 8)
        m.update(gray, real=True)
        assert seen["path"] == str(weights.resolve()) and seen["antialias"] is False
        assert seen["features"] == ["2048"]
        x = seen["input"]
        assert x.dtype == torch.uint8 and x.shape == (2, 3, 8, 8)
        assert int(x.min()) == 0 and int(x.max()) == 255 and torch.equal(x[:, 0], x[:, 2])
        m.update(gray.flip(0), real=False)
        assert m.compute()["fid"] >= 0
    finally:
        fid_mod._cached_inception.cache_clear()


# ----------------------------------------------------------------------------- SWD
def test_swd_levels_layout():
    assert metrics.pyramid_resolutions(128) == [128, 64, 32, 16]
    assert metrics.pyramid_resolutions(64) == [64, 32, 16]
    assert metrics.pyramid_resolutions(32) == [32, 16]
    assert metrics.pyramid_resolutions(28) == [28, 14]
    out = metrics.sliced_wasserstein(blobs(4, 28, 1), blobs(4, 28, 1, seed=1), **SWD_FAST)
    assert set(out) == {"L0", "L1", "avg"}


def test_swd_identical_small_different_large_monotone():
    real = blobs(48, 32, seed=0)
    same = metrics.sliced_wasserstein(real, real, **SWD_FAST)["avg"]
    fresh = metrics.sliced_wasserstein(real, blobs(48, 32, seed=1), **SWD_FAST)["avg"]
    far = metrics.sliced_wasserstein(real, noise(48, 32, seed=2), **SWD_FAST)["avg"]
    assert same < fresh < far and far > 5 * fresh
    # Mixing in more of the other set raises the distance.
    mixes = [torch.cat([noise(k, 32, seed=2), blobs(48 - k, 32, seed=1)]) for k in (0, 12, 24)]
    vals = [metrics.sliced_wasserstein(real, m, **SWD_FAST)["avg"] for m in mixes]
    assert vals[0] < vals[1] < vals[2]


def test_swd_deterministic_with_seed():
    a, b = blobs(16, 32, seed=0), blobs(16, 32, seed=1)
    r1 = metrics.sliced_wasserstein(a, b, seed=3, **SWD_FAST)
    assert r1 == metrics.sliced_wasserstein(a, b, seed=3, **SWD_FAST)
    assert r1 != metrics.sliced_wasserstein(a, b, seed=4, **SWD_FAST)


# ----------------------------------------------------------------------------- classifier
def test_load_shard_tensors_png_and_raw(tmp_path, toy_shards):
    root, labels = toy_shards
    x, y, names = metrics.load_shard_tensors(root)
    assert x.shape == (320, 1, 28, 28) and x.min() >= -1 and x.max() <= 1
    assert torch.equal(y, labels) and names == [f"c{k}" for k in range(K_TOY)]
    assert torch.allclose(x, toy_squares(labels, seed=0), atol=1 / 127.5 + 1e-6)
    x5, y5, _ = metrics.load_shard_tensors(root, limit=5)
    assert x5.shape[0] == 5 and torch.equal(y5, labels[:5])

    # A shard whose bytes no longer match the manifest's sha256 is refused.
    bad = tmp_path / "bad"
    write_shards(bad, toy_squares(labels[:8]), labels[:8])
    with open(bad / "shard-000000.tar", "r+b") as f:
        f.seek(600)
        f.write(b"\x00garbage")
    with pytest.raises(ValueError, match="sha256"):
        metrics.load_shard_tensors(bad)

    rgb = blobs(10, 32, 3)
    write_shards(tmp_path / "raw", rgb, None, encoding="u8", per_shard=4)
    xr, yr, nr = metrics.load_shard_tensors(tmp_path / "raw")
    assert yr is None and nr == [] and xr.shape == (10, 3, 32, 32)
    assert (xr - rgb).abs().max() <= 1 / 127.5 + 1e-6


def test_classifier_accuracy_histograms_and_fid(trained_clf):
    test_labels = torch.arange(200) % K_TOY
    test_x = toy_squares(test_labels, seed=99)
    assert metrics.conditional_accuracy(trained_clf, test_x, test_labels) > 0.9

    collapsed = toy_squares(torch.zeros(100, dtype=torch.long), seed=5)
    col = metrics.class_histogram_stats(trained_clf, collapsed, test_labels)
    assert col["covered"] == 1 and col["rkl"] > 0.8 * math.log(K_TOY)

    bal = metrics.class_histogram_stats(trained_clf, test_x, test_labels)
    assert bal["covered"] == K_TOY and bal["rkl"] < 0.05
    assert len(bal["hist"]) == K_TOY and sum(bal["hist"]) == pytest.approx(1.0)
    # A histogram (probabilities) works as the reference as well as labels.
    assert metrics.class_histogram_stats(trained_clf, collapsed, [0.25] * K_TOY)["rkl"] == pytest.approx(col["rkl"])

    real = toy_squares(test_labels, seed=1)
    assert metrics.classifier_fid(trained_clf, real, test_x) < 0.2 * metrics.classifier_fid(trained_clf, real, collapsed)


def test_classifier_cache_reused(toy_shards, cache_dir, trained_clf, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("trained again although a cached classifier exists")

    monkeypatch.setattr(clf_mod, "train_classifier", no_training)
    again = metrics.get_or_train_classifier(toy_shards[0], **CLF_SETTINGS, cache_dir=cache_dir)
    assert again.from_cache and not trained_clf.from_cache
    x = toy_squares(torch.arange(8) % K_TOY, seed=3)
    assert torch.equal(metrics.predict(again, x), metrics.predict(trained_clf, x))
    # Different training settings are a different cache entry.
    with pytest.raises(AssertionError, match="trained again"):
        metrics.get_or_train_classifier(toy_shards[0], **{**CLF_SETTINGS, "steps": 61}, cache_dir=cache_dir)


# ----------------------------------------------------------------------------- diversity
class TinyGenerator(nn.Module):
    def __init__(self, use_z: bool, z_dim: int = 16) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.use_z = use_z
        self.fc = nn.Linear(z_dim, 8 * 7 * 7)
        self.bias = nn.Parameter(torch.randn(1, 8 * 7 * 7))
        self.up = nn.Sequential(nn.Upsample(scale_factor=4), nn.Conv2d(8, 1, 3, padding=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.fc(z) * 3 if self.use_z else self.bias.expand(z.shape[0], -1)
        return torch.tanh(self.up(h.view(-1, 8, 7, 7)))


def test_collapse_alarm_trips_for_collapsed_not_healthy():
    real = toy_squares(torch.arange(128) % K_TOY, seed=0)
    z = torch.randn(128, 16, generator=torch.Generator().manual_seed(1))
    collapsed_g, healthy_g = TinyGenerator(use_z=False), TinyGenerator(use_z=True)
    critic_trunk = RandomConvFeatures(c=1)
    with torch.no_grad():
        col_stats = metrics.diversity_stats(collapsed_g(z), real, critic_trunk)
        ok_stats = metrics.diversity_stats(healthy_g(z), real, critic_trunk)
    subset_stats = metrics.diversity_stats(real[64:], real[:64])
    assert col_stats["ratio"] < 0.05 and col_stats["feat_ratio"] < 0.05
    assert ok_stats["ratio"] > 0.5 and 0.8 < subset_stats["ratio"] < 1.25

    alarm = metrics.CollapseAlarm(threshold=0.5, patience=2)
    assert not alarm.update(col_stats)
    assert alarm.update(col_stats) and "diversity ratio" in alarm.message
    healthy = metrics.CollapseAlarm(threshold=0.5, patience=2)
    assert not any(healthy.update(s) for s in (ok_stats, subset_stats, ok_stats, ok_stats))
    assert healthy.message is None


def test_diversity_within_a_class_sees_one_image_per_class():
    # A conditional generator that makes one image per class: its classes differ, so pooled
    # over classes its spread looks healthy; within a class it is collapsed.
    labels = torch.arange(128) % K_TOY
    real = toy_squares(labels, seed=0)
    one_each = torch.stack([real[labels == k][0] for k in range(K_TOY)])[labels]
    fake = one_each + 0.01 * torch.randn(one_each.shape, generator=torch.Generator().manual_seed(2))
    pooled = metrics.diversity_stats(fake, real)
    within = metrics.diversity_stats(fake, real, fake_labels=labels, real_labels=labels)
    assert pooled["ratio"] > 0.5 and pooled["within"] == 0.0
    assert within["ratio"] < 0.1 and within["within"] == 1.0
    healthy = metrics.diversity_stats(real[64:], real[:64], fake_labels=labels[64:], real_labels=labels[:64])
    assert 0.8 < healthy["ratio"] < 1.25
    # A batch with no two reals of a class falls back to all pairs (and says so).
    few = metrics.diversity_stats(fake[:K_TOY], real[:K_TOY], fake_labels=labels[:K_TOY],
                                  real_labels=labels[:K_TOY])
    assert few["within"] == 0.0


def test_collapse_alarm_from_class_coverage():
    alarm = metrics.CollapseAlarm(patience=2, min_covered_frac=0.5)
    good_div = {"div_ratio": 0.9}
    assert not alarm.update(good_div, {"covered_frac": 0.25})
    assert not alarm.update(good_div, {"covered_frac": 1.0})  # a good check re-arms
    assert not alarm.update({"div_ratio": 0.9, "cls_covered_frac": 0.1})
    assert alarm.update({"div_ratio": 0.9, "cls_covered_frac": 0.1}) and "classes covered" in alarm.message


# ----------------------------------------------------------------------------- GP visuals
class LinearCritic(nn.Module):
    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.w).flatten(1).sum(1)


def test_gradient_maps_and_norms_linear_critic():
    w = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    critic = LinearCritic(w)
    real, fake = blobs(5, 8), noise(5, 8)
    with torch.no_grad():  # must work from evaluation code under no_grad
        maps = metrics.gradient_norm_maps(critic, real, fake, torch.rand(5))
    expected = w.square().sum(1, keepdim=True).sqrt()
    expected = (expected / expected.max()).expand(5, -1, -1, -1)
    assert maps.shape == (5, 1, 8, 8) and maps.max() <= 1.0
    assert torch.allclose(maps, expected, atol=1e-5)
    norms = metrics.grad_norms(critic, real)
    assert torch.allclose(norms, w.norm().expand(5), rtol=1e-5)
    assert critic.w.grad is None

    class Writer:
        def __init__(self):
            self.calls = []

        def add_image(self, tag, img, step):
            self.calls.append((tag, tuple(img.shape)))

        def add_histogram(self, tag, values, step):
            self.calls.append((tag, tuple(values.shape)))

    writer = Writer()
    summary = metrics.log_gradient_visuals(writer, critic, real, fake, step=3, alpha=0.5)
    assert [c[0] for c in writer.calls] == ["gp/grad_maps", "gp/grad_norms"]
    assert summary["grad_norm_mean"] == pytest.approx(float(w.norm()), rel=1e-5)


# ----------------------------------------------------------------------------- evaluate_samples
def test_evaluate_samples_keys_and_determinism(trained_clf):
    labels = torch.arange(64) % K_TOY
    real, fake = toy_squares(labels, seed=0), toy_squares(labels, seed=1)
    kwargs = dict(fake_labels=labels, real_labels=labels, classifier=trained_clf,
                  fid_features=RandomConvFeatures(c=1))
    state = torch.get_rng_state()
    r1 = metrics.evaluate_samples(fake, real, **kwargs)
    assert torch.equal(state, torch.get_rng_state())  # the caller's RNG is untouched
    r2 = metrics.evaluate_samples(fake, real, **kwargs)
    assert r1 == r2
    expected = {"fid", "kid_mean", "kid_std", "swd_L0", "swd_L1", "swd_avg", "cls_acc",
                "cls_covered", "cls_real_classes", "cls_covered_frac", "cls_rkl", "cls_fid",
                "cls_confident", "cls_confident_real", "div_ratio", "div_pixel_ratio"}
    assert set(r1) == expected and all(isinstance(v, float) for v in r1.values())
    assert r1["cls_acc"] > 0.9 and r1["cls_covered"] == K_TOY and 0.5 < r1["div_ratio"] < 2
    # fractions; this briefly trained classifier is sure of clean squares at p >= 0.5 (its
    # softmax stays under the default 0.9), of uniform noise less often
    assert 0 <= r1["cls_confident"] <= 1 and 0 <= r1["cls_confident_real"] <= 1
    noise = torch.rand(fake.shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    sure = metrics.confident_fraction(trained_clf, fake, threshold=0.5)
    assert sure == 1.0 and metrics.confident_fraction(trained_clf, noise, threshold=0.5) < sure
    minimal = metrics.evaluate_samples(fake, real, swd=False)
    assert set(minimal) == {"div_ratio", "div_pixel_ratio"}
