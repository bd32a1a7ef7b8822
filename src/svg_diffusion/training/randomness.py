"""Randomness as a pure function of (seed, step, stream): reproducible, resumable, independent of world size.

A training step never draws from a generator whose state depends on history. Its noise, timesteps, flips and
masks come from ``step_generator(seed, step, stream)``, identical on every rank, drawn for the GLOBAL batch
and sliced to the rank's rows; so resuming at step s needs no stored generator state, and 1 process with
batch B computes what N processes with B/N each compute together.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed mixed from ints and strings; the same on every machine, process and Python run."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # torch seeds must fit a signed 64-bit int


def step_generator(seed: int, step: int, stream: str, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh generator on ``device`` seeded from (seed, step, stream); use one ``stream`` name per purpose."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, step, stream))
