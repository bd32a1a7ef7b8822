"""Reference points and timings of the evaluation metrics on Fashion-MNIST 32x32 (for docs/evaluation.md).

    python benchmarks/evaluation_reference.py [--test 10000] [--train 5000] [--noise 500] [--cache-dir DIR]

Prints markdown tables: FID and precision/recall between the two halves of the test split, test vs train,
test vs uniform noise, and the time of each step on this machine. Inception features are computed in chunks
of ``--chunk`` images, each stored in the normal feature cache as soon as it is done, so an interrupted run
loses at most one chunk and a second run only measures the cached path. Chunks of the two test halves
and of train alternate, so a run stopped early (``--max-minutes``) reports on equal-sized parts.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.data import Subset

from svg_diffusion.evaluation import FeatureCache, FeatureStats, InceptionFeatures, extract_features, inception_cache_key
from svg_diffusion.evaluation import frechet_distance, precision_recall
from svg_diffusion.evaluation.sources import open_image_source


def chunk_features(split: str, start: int, size: int, inception, store: FeatureCache) -> torch.Tensor:
    """Inception features of images start..start+size-1 of a split, through the cache."""
    chunk = Subset(open_image_source(f"fashion_mnist:{split}"), range(start, start + size))
    key = inception_cache_key(chunk)
    entry = store.load(key, ("features",))
    if entry is not None:
        return torch.from_numpy(entry["features"])
    features, _ = extract_features(inception, chunk, batch_size=64, desc=f"{split}[{start}:{start + size}]", progress=True)
    stats = FeatureStats.from_features(features)
    store.save(key, features=features.numpy(), mu=stats.mu, sigma=stats.sigma, count=stats.count,
               source=f"fashion_mnist:{split}[{start}:{start + size}]")
    return features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--test", type=int, default=10000, help="test images (split in two halves)")
    parser.add_argument("--train", type=int, default=5000, help="train images (the first N)")
    parser.add_argument("--noise", type=int, default=500, help="uniform-noise images")
    parser.add_argument("--chunk", type=int, default=500)
    parser.add_argument("--max-minutes", type=float, default=None, help="stop computing new chunks after this")
    parser.add_argument("--rounds", type=int, default=None, help="stop after this many chunks of each part")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start_time = time.perf_counter()
    store = FeatureCache(args.cache_dir)
    inception = InceptionFeatures()
    timings = []

    probe = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    inception(probe[:8])  # warm-up
    tick = time.perf_counter()
    inception(probe)
    timings.append(("Inception features, batch of 64 at 32x32 -> 299x299", f"{64 / (time.perf_counter() - tick):.1f} images/s"))
    tick = time.perf_counter()
    inception_cache_key(open_image_source("fashion_mnist:test"))
    timings.append(("cache key of the 10k test images (decode + SHA-256 of the pixels)", f"{time.perf_counter() - tick:.2f} s"))

    def out_of_time(round_index: int) -> bool:
        return (args.max_minutes is not None and time.perf_counter() - start_time > 60 * args.max_minutes) or (
            args.rounds is not None and round_index >= args.rounds)

    # Chunks of the two test halves and of train alternate, so a run stopped early still has equal halves
    # and a train set of the same size.
    half = args.test // 2
    first, second, train = [], [], []
    for round_index, start in enumerate(range(0, max(half, args.train), args.chunk)):
        if out_of_time(round_index):
            break
        if start < half:
            first.append(chunk_features("test", start, args.chunk, inception, store))
            second.append(chunk_features("test", half + start, args.chunk, inception, store))
        if start < args.train:
            train.append(chunk_features("train", start, args.chunk, inception, store))
    first, second = torch.cat(first), torch.cat(second)
    test = torch.cat([first, second])
    noise_pixels = torch.randint(0, 256, (args.noise, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    noise, _ = extract_features(inception, open_image_source(noise_pixels), desc="noise", progress=True)

    tick = time.perf_counter()
    first_stats, second_stats = FeatureStats.from_features(first), FeatureStats.from_features(second)
    timings.append((f"statistics (float64 mean, covariance) of 2 x {len(first)} features", f"{time.perf_counter() - tick:.2f} s"))
    tick = time.perf_counter()
    halves = frechet_distance(first_stats, second_stats)
    timings.append(("Fréchet distance of two 2048-d Gaussians", f"{time.perf_counter() - tick:.2f} s"))
    tick = time.perf_counter()
    halves_pr = precision_recall(first, second)
    timings.append((f"precision/recall, {len(first)} vs {len(second)}, k=3", f"{time.perf_counter() - tick:.1f} s"))

    rows = [(f"test[:{len(first)}] vs test[{half}:{half + len(second)}]", halves, halves_pr)]
    if train:
        train = torch.cat(train)
        rows.append((f"test ({len(first)} + {len(second)}) vs train[:{len(train)}]",
                     frechet_distance(FeatureStats.from_features(test), FeatureStats.from_features(train)),
                     precision_recall(train, test[torch.linspace(0, len(test) - 1, len(train)).long()])))
    rows.append((f"test[:{len(noise)}] vs uniform noise ({len(noise)})",
                 frechet_distance(FeatureStats.from_features(first[: len(noise)]), FeatureStats.from_features(noise)),
                 precision_recall(first[: len(noise)], noise)))

    print(f"\n{torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| step | time |\n| --- | --- |")
    for name, value in timings:
        print(f"| {name} | {value} |")
    print("\n| Fashion-MNIST 32x32 | FID | precision | recall |\n| --- | --- | --- | --- |")
    for name, value, (precision, recall) in rows:
        print(f"| {name} | {value:.2f} | {precision:.3f} | {recall:.3f} |")


if __name__ == "__main__":
    main()
