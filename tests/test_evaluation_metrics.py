"""The metric arithmetic without Inception: Fréchet distance against scipy, statistics files, precision/recall
geometry, the legacy-TF resize. Fast: no network runs here (tests/test_evaluation.py has the real ones)."""

import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from svg_diffusion.errors import SVGError
from svg_diffusion.evaluation import FeatureStats, frechet_distance, precision_recall
from svg_diffusion.evaluation.inception import quantize_to_uint8_levels, resize_legacy_bilinear


def scipy_frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """The formula of pytorch-fid / ADM's evaluator: scipy's general matrix square root of S_a S_b, float64."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        covmean = scipy.linalg.sqrtm(a.sigma @ b.sigma)
    diff = a.mu - b.mu
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * np.trace(covmean.real))


def gaussian_features(rng, n, dim, shift=0.0, scale=1.0):
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)
    return rng.normal(size=(n, dim)) @ mixing * scale + shift


@pytest.mark.parametrize("n, dim", [(500, 32), (300, 256), (40, 64)])  # the last: singular covariances (N < D)
def test_frechet_distance_equals_float64_scipy_reference(n, dim):
    rng = np.random.default_rng(n + dim)
    a = FeatureStats.from_features(gaussian_features(rng, n, dim))
    b = FeatureStats.from_features(gaussian_features(rng, n, dim, shift=0.3, scale=1.5))
    ours, reference = frechet_distance(a, b), scipy_frechet_distance(a, b)
    assert ours == pytest.approx(reference, rel=1e-7)
    assert frechet_distance(b, a) == pytest.approx(ours, rel=1e-7)  # symmetric
    # Zero up to round-off, which the square root amplifies on singular covariances (~sqrt(eps) * scale).
    assert abs(frechet_distance(a, a)) < 1e-6 * np.trace(a.sigma)


def test_frechet_distance_of_diagonal_gaussians_has_the_closed_form():
    # With commuting (diagonal) covariances FD = |mu_a - mu_b|^2 + sum (sqrt(a_i) - sqrt(b_i))^2, zeros included.
    var_a, var_b = np.array([4.0, 1.0, 0.0, 9.0]), np.array([1.0, 1.0, 2.0, 0.0])
    a = FeatureStats(mu=np.zeros(4), sigma=np.diag(var_a), count=-1)
    b = FeatureStats(mu=np.array([1.0, 2.0, 0.0, 0.0]), sigma=np.diag(var_b), count=-1)
    expected = 5.0 + ((np.sqrt(var_a) - np.sqrt(var_b)) ** 2).sum()
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-12)


def test_statistics_are_float64_unbiased_and_round_trip_through_npz(tmp_path):
    features = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    stats = FeatureStats.from_features(features)
    assert stats.mu.dtype == np.float64 and stats.count == 50
    np.testing.assert_allclose(stats.sigma, np.cov(features.double().numpy(), rowvar=False))
    loaded = FeatureStats.load(stats.save(tmp_path / "stats.npz"))
    np.testing.assert_array_equal(loaded.mu, stats.mu)
    np.testing.assert_array_equal(loaded.sigma, stats.sigma)
    assert loaded.count == 50
    # A foreign statistics file (pytorch-fid writes float32 mu and sigma, no count) loads as float64.
    np.savez(tmp_path / "foreign.npz", mu=stats.mu.astype(np.float32), sigma=stats.sigma.astype(np.float32))
    foreign = FeatureStats.load(tmp_path / "foreign.npz")
    assert foreign.sigma.dtype == np.float64 and foreign.count == -1


def test_bad_statistics_are_one_clear_error(tmp_path):
    np.savez(tmp_path / "bad.npz", mu=np.zeros(3), sigma=np.zeros((3, 2)))
    with pytest.raises(SVGError, match="not \\[D\\] and \\[D, D\\]"):
        FeatureStats.load(tmp_path / "bad.npz")
    (tmp_path / "broken.npz").write_bytes(b"not a zip file")
    with pytest.raises(SVGError, match="not a readable .npz"):
        FeatureStats.load(tmp_path / "broken.npz")
    small = FeatureStats.from_features(np.zeros((3, 4)))
    with pytest.raises(SVGError, match="4-d and 5-d"):
        frechet_distance(small, FeatureStats.from_features(np.zeros((3, 5))))
    with pytest.raises(SVGError, match="N >= 2"):
        FeatureStats.from_features(np.zeros((1, 4)))


def blobs(generator, n, centres):
    """n points in 2-d around each of the given centres (unit Gaussian noise)."""
    return torch.cat([torch.randn(n, 2, generator=generator) + c for c in centres])


def test_precision_recall_on_known_geometry():
    g = torch.Generator().manual_seed(0)
    real = blobs(g, 500, [0.0, 50.0])
    assert precision_recall(real, real.clone()) == (1.0, 1.0)
    assert precision_recall(real, blobs(g, 500, [500.0, 600.0])) == (0.0, 0.0)
    # Samples from only one of the two real modes: realistic, but half of the variety is missed.
    precision, recall = precision_recall(real, blobs(g, 1000, [0.0]))
    assert precision > 0.95 and 0.4 < recall < 0.55
    # A fresh sample of the same distribution: both high but below 1 (k=3 balls do not cover the tails).
    precision, recall = precision_recall(real, blobs(g, 500, [0.0, 50.0]))
    assert 0.9 < precision < 1.0 and 0.9 < recall < 1.0


def test_precision_recall_input_checks():
    x = torch.randn(10, 4)
    with pytest.raises(SVGError, match="more than 3 samples"):
        precision_recall(x, x[:3])
    with pytest.raises(SVGError, match="one D"):
        precision_recall(x, torch.randn(10, 5))
    with pytest.raises(SVGError, match="k >= 1"):
        precision_recall(x, x, k=0)


def test_resize_is_tensorflow_legacy_bilinear():
    # Independent reference: grid_sample at input coordinate i * in / out (align_corners=True addresses
    # pixel centres 0..in-1 exactly), clamped to the border: TF1 resize_bilinear, half_pixel_centers=False.
    g = torch.Generator().manual_seed(0)
    for in_h, in_w, out in [(32, 32, 299), (28, 20, 299), (64, 64, 17)]:
        image = torch.rand(2, 3, in_h, in_w, generator=g) * 255
        ys = torch.arange(out, dtype=torch.float64) * in_h / out
        xs = torch.arange(out, dtype=torch.float64) * in_w / out
        grid_y = (2 * ys / (in_h - 1) - 1).view(out, 1).expand(out, out)
        grid_x = (2 * xs / (in_w - 1) - 1).view(1, out).expand(out, out)
        grid = torch.stack([grid_x, grid_y], dim=-1).unsqueeze(0).expand(2, -1, -1, -1)
        reference = F.grid_sample(image.double(), grid, mode="bilinear", padding_mode="border", align_corners=True)
        ours = resize_legacy_bilinear(image, out)
        torch.testing.assert_close(ours.double(), reference, atol=1e-3, rtol=0)
        # Output pixel 0 is input pixel 0 exactly (no half-pixel shift).
        torch.testing.assert_close(ours[..., 0, 0], image[..., 0, 0])


def test_float_images_are_measured_as_the_png_they_would_be_saved_as():
    pixels = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    as_float = pixels.float() / 127.5 - 1
    assert torch.equal(quantize_to_uint8_levels(as_float), pixels.float())
    assert torch.equal(quantize_to_uint8_levels(pixels), pixels.float())
    # Off-level values round to the nearest level, out-of-range values clip.
    assert quantize_to_uint8_levels(torch.tensor([-2.0, -1.0, 0.0, 1.0, 3.0])).tolist() == [0, 0, 128, 255, 255]
