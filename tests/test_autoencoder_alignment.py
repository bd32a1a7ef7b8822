"""Distribution alignment: the public numerics (docs/official.md) and the running/batch/none modes."""

import pytest
import torch

from svg_diffusion.autoencoder import DistributionAlignment, scalar_statistics
from svg_diffusion.errors import SVGError


def maps(seed: int, batch: int = 4, channels: int = 6, offset: float = 0.0) -> torch.Tensor:
    """A map whose channels have different means and scales, so per-channel and global stds differ."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.linspace(0.5, 3.0, channels).view(1, -1, 1, 1)
    means = torch.linspace(-2.0, 4.0, channels).view(1, -1, 1, 1) + offset
    return torch.randn(batch, channels, 3, 5, generator=g) * scales + means


def direct_alignment(features, residual):
    """The public alignment written out with torch's own reductions (the public code's formula)."""
    dims = (0, 2, 3)
    f_mean, f_std = features.mean(dims).mean(), features.std(dims).mean()
    r_mean, r_std = residual.mean(dims).mean(), residual.std(dims).mean()
    return (residual - r_mean) / (r_std + 1e-6) * f_std + f_mean


def test_scalar_std_is_the_mean_of_per_channel_unbiased_stds():
    x = maps(0) + 1000.0  # a large offset would expose a one-pass variance
    mean, std = scalar_statistics(x)
    torch.testing.assert_close(mean, x.mean(dim=(0, 2, 3)).mean())
    torch.testing.assert_close(std, x.std(dim=(0, 2, 3)).mean())
    assert abs(std - x.std()) > 0.5  # not the global std


@pytest.mark.parametrize("training", [True, False])
def test_batch_mode_matches_the_public_formula(training):
    features, residual = maps(1, channels=16), maps(2, channels=3) * 0.1
    align = DistributionAlignment("batch").train(training)
    torch.testing.assert_close(align(features, residual), direct_alignment(features, residual))


def test_running_mode_tracks_training_batches_and_freezes_in_eval():
    align = DistributionAlignment("running", momentum=0.25)
    batches = [(maps(s, channels=16), maps(s + 10, channels=3)) for s in range(3)]
    for features, residual in batches:  # training uses the batch's own statistics, like the public code
        torch.testing.assert_close(align(features, residual), direct_alignment(features, residual))
    stats = [scalar_statistics(f) + scalar_statistics(r) for f, r in batches]
    expected = stats[0][1]
    for batch_stats in stats[1:]:  # the first batch replaces the zeros, later ones are blended in
        expected = 0.75 * expected + 0.25 * batch_stats[1]
    torch.testing.assert_close(align.feature_std, expected)
    assert int(align.num_batches_tracked) == 3

    align.eval()
    features, residual = maps(7, channels=16), maps(8, channels=3)
    whole = align(features, residual)
    alone = torch.cat([align(features[i : i + 1], residual[i : i + 1]) for i in range(len(features))])
    torch.testing.assert_close(alone, whole)  # batch-independent
    frozen = (residual - align.residual_mean) / (align.residual_std + 1e-6) * align.feature_std + align.feature_mean
    torch.testing.assert_close(whole, frozen)
    assert int(align.num_batches_tracked) == 3  # eval does not update


def test_cumulative_average_without_momentum():
    align = DistributionAlignment("running", momentum=None)
    batches = [(maps(s, channels=8), maps(s + 20, channels=2)) for s in range(4)]
    for features, residual in batches:
        align.update(features, residual)
    mean_residual_std = torch.stack([scalar_statistics(r)[1] for _, r in batches]).mean()
    torch.testing.assert_close(align.residual_std, mean_residual_std)


def test_eval_without_statistics_is_an_error_and_reset_clears_them():
    align = DistributionAlignment("running").eval()
    with pytest.raises(SVGError, match="never estimated"):
        align(maps(0), maps(1))
    align.update(maps(0), maps(1))
    align(maps(0), maps(1))
    align.reset_statistics()
    assert int(align.num_batches_tracked) == 0 and float(align.feature_std) == 0.0


def test_none_mode_passes_the_residual_through():
    residual = maps(3, channels=2)
    assert DistributionAlignment("none")(maps(4), residual) is residual
    with pytest.raises(ValueError, match="alignment mode"):
        DistributionAlignment("global")
