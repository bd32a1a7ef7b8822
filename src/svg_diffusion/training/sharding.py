"""Which samples each process reads at each training step, and how evaluation splits a dataset.

Training reads an infinite stream: the concatenation of one shuffled permutation of the dataset per epoch,
each permutation a pure function of (seed, epoch). Step ``s`` takes the ``global_batch_size`` positions
``[s * B, (s + 1) * B)`` of that stream (a batch may straddle two epochs, so no sample is ever dropped),
and rank ``r`` of ``world_size`` takes its contiguous slice of that global batch. Hence:

- the global batch at a step does not depend on how many processes share it (1 process with batch B reads
  exactly what 2 processes with B/2 each read together);
- resuming at step ``s`` needs no replay: ``iter_from(s)`` computes the position directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from itertools import count

import numpy as np

from ..errors import SVGError


class StepSampler:
    """Deterministic infinite stream of per-step index lists for one rank (use as a DataLoader ``batch_sampler``).

    ``StepSampler(num_samples, global_batch_size, seed, rank, world_size)``; ``batch(step)`` is this rank's
    list of ``global_batch_size // world_size`` dataset indices at ``step``; ``iter_from(step)`` yields the
    batches of ``step``, ``step + 1``, ... (``iter(sampler)`` starts at step 0).
    """

    def __init__(self, num_samples: int, global_batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if num_samples < 1:
            raise SVGError(f"StepSampler: the dataset is empty (num_samples = {num_samples})")
        if global_batch_size < 1:
            raise SVGError(f"StepSampler: global_batch_size must be positive, got {global_batch_size}")
        if seed < 0:
            raise SVGError(f"StepSampler: seed must be non-negative, got {seed}")
        if not 0 <= rank < world_size:
            raise SVGError(f"StepSampler: rank {rank} is outside world_size {world_size}")
        if global_batch_size % world_size:
            raise SVGError(
                f"StepSampler: global_batch_size {global_batch_size} is not divisible by world_size {world_size}"
            )
        self.num_samples = num_samples
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.local_batch_size = global_batch_size // world_size
        self._cached_epoch: tuple[int, np.ndarray] | None = None

    def permutation(self, epoch: int) -> np.ndarray:
        """The order in which ``epoch`` visits the dataset (a pure function of seed and epoch)."""
        if self._cached_epoch is None or self._cached_epoch[0] != epoch:
            self._cached_epoch = (epoch, np.random.default_rng([self.seed, epoch]).permutation(self.num_samples))
        return self._cached_epoch[1]

    def batch(self, step: int) -> list[int]:
        """This rank's dataset indices at ``step``."""
        position = step * self.global_batch_size + self.rank * self.local_batch_size
        indices: list[int] = []
        while len(indices) < self.local_batch_size:
            epoch, offset = divmod(position + len(indices), self.num_samples)
            wanted = self.local_batch_size - len(indices)
            indices.extend(self.permutation(epoch)[offset : offset + wanted].tolist())
        return indices

    def epoch(self, step: int) -> float:
        """How many passes over the dataset the first ``step`` steps make (fractional)."""
        return step * self.global_batch_size / self.num_samples

    def iter_from(self, step: int) -> Iterator[list[int]]:
        """The batches of ``step``, ``step + 1``, ... without end."""
        for s in count(step):
            yield self.batch(s)

    def __iter__(self) -> Iterator[list[int]]:
        return self.iter_from(0)


def shard_indices(n: int, rank: int, world_size: int) -> range:
    """Rank ``rank``'s contiguous share of ``range(n)`` for evaluation: no duplicates, everything covered.

    Shares differ in size by at most one; concatenating them in rank order (``all_gather_rows``) gives
    back the dataset order.
    """
    if n < 0 or not 0 <= rank < world_size:
        raise SVGError(f"shard_indices: cannot split {n} items for rank {rank} of world_size {world_size}")
    return range(rank * n // world_size, (rank + 1) * n // world_size)
