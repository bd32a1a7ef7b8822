"""StepSampler and shard_indices: deterministic, resumable, complete, and independent of world size."""

import itertools

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from svg_diffusion.training.sharding import StepSampler, shard_indices
from svg_diffusion.errors import SVGError


def first_batches(sampler: StepSampler, steps: int, start: int = 0) -> list[list[int]]:
    return list(itertools.islice(sampler.iter_from(start), steps))


def test_same_arguments_give_the_same_stream_and_seeds_differ():
    assert first_batches(StepSampler(100, 8, seed=3), 20) == first_batches(StepSampler(100, 8, seed=3), 20)
    assert first_batches(StepSampler(100, 8, seed=3), 20) != first_batches(StepSampler(100, 8, seed=4), 20)


@pytest.mark.parametrize("num_samples, batch", [(10, 4), (12, 4), (3, 8), (97, 96)])
def test_every_epoch_visits_every_sample_once(num_samples, batch):
    """Batches may straddle epochs (and exceed the dataset): the stream is one permutation per epoch."""
    sampler = StepSampler(num_samples, batch, seed=0)
    stream = [i for indices in first_batches(sampler, 3 * num_samples) for i in indices]
    epochs = [stream[e * num_samples : (e + 1) * num_samples] for e in range(len(stream) // num_samples)]
    assert all(sorted(epoch) == list(range(num_samples)) for epoch in epochs)
    assert epochs[0] != epochs[1] or num_samples < 4  # reshuffled every epoch
    assert sampler.epoch(num_samples) == batch


@pytest.mark.parametrize("world_size", [2, 4, 8])
def test_global_batch_does_not_depend_on_world_size(world_size):
    single = first_batches(StepSampler(50, 16, seed=1), 12)
    ranks = [first_batches(StepSampler(50, 16, seed=1, rank=r, world_size=world_size), 12) for r in range(world_size)]
    for step in range(12):
        assert [i for r in range(world_size) for i in ranks[r][step]] == single[step]  # rank r: contiguous slice r
        assert all(len(ranks[r][step]) == 16 // world_size for r in range(world_size))


def test_iter_from_resumes_without_replaying():
    sampler = StepSampler(37, 6, seed=5, rank=1, world_size=2)
    assert first_batches(sampler, 10, start=25) == first_batches(sampler, 35)[25:]
    assert next(iter(sampler)) == sampler.batch(0)


def test_works_as_a_dataloader_batch_sampler():
    dataset = TensorDataset(torch.arange(40) * 10)
    sampler = StepSampler(40, 8, seed=2, rank=1, world_size=2)
    loader = DataLoader(dataset, batch_sampler=sampler.iter_from(7), num_workers=0)
    for step, (values,) in zip(range(7, 12), loader):
        assert values.tolist() == [10 * i for i in sampler.batch(step)]


@pytest.mark.parametrize(
    "args, message",
    [
        ((0, 4, 0), "dataset is empty"),
        ((10, 6, 0, 0, 4), "not divisible by world_size 4"),
        ((10, 8, 0, 2, 2), "rank 2 is outside world_size 2"),
        ((10, 8, -1), "seed must be non-negative"),
    ],
)
def test_bad_arguments_are_named(args, message):
    with pytest.raises(SVGError, match=message):
        StepSampler(*args)


@pytest.mark.parametrize("n, world_size", [(0, 3), (7, 2), (10, 3), (5, 8), (1000, 7)])
def test_shard_indices_cover_everything_once_in_order(n, world_size):
    shards = [shard_indices(n, r, world_size) for r in range(world_size)]
    assert [i for shard in shards for i in shard] == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(SVGError):
        shard_indices(n, world_size, world_size)
