"""The reproduction's ``diagnosis`` stage: where each arm's generation FID comes from.

A generation FID mixes two things: how far the DiT's samples are from the real latents, and how much of such an
error the decoder turns into what Inception sees. Both are measured per arm in the coordinates its DiT models
(whitened PCA directions or channels normalized to unit variance: one unit is one standard deviation of the
data in every arm), on the first ``--reference`` test images:

- ``decoder_noise``: rFID of the images decoded from T^-1(T(z) + σ·ε), ε standard normal, for each σ of
  ``NOISE_LEVELS`` (the clean row is the reconstruction stage's): how much a latent may be off in the DiT's
  units before the arm's decoder shows it; beside them ``decoder_training_noise``, the RMS noise (same units)
  of the latents the decoder was trained on (a KL autoencoder's posterior samples; 0 for SVG's);
- ``latent_fit``, at each DiT step: ``--samples`` generated latents (the FID stage's sampler, labels and noise,
  bf16) against the real test latents, in the DiT's coordinates: the coordinates' std (real: ~1); Fréchet
  distances divided by the trace of the reference's covariance, so arms with 4 and 16 coordinates compare
  (0: the same distribution), of the per-position vectors (pooled over the h×w positions: what one position
  holds) and of whole latents on their top ``GLOBAL_DIRECTIONS`` principal directions (how positions go
  together: what an image is), each against the second half of the real latents, beside the first half's
  distance to it (the floor the sample size alone gives); and the checkpoint's flow-matching loss on the real
  test latents (held out) at ``LOSS_TIMES``, fixed noise, labels kept: the mean squared velocity error per
  coordinate, which a model that predicts 0 puts at ~2;
- ``other_decoder`` (``--other-decoder ARM FOLDER``, outside the fair comparison): the arm's samples at the last
  of ``--diagnosis-at`` decoded by another autoencoder folder that encodes exactly as the arm's (a decoder
  fine-tuned on the same latent): the FID of the very samples of the FID stage and the rFID through the DiT's
  transform, so the part of the arm's FID that is its decoder's shows.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from svg_diffusion.autoencoder import Autoencoder, KLAutoencoder, load_autoencoder
from svg_diffusion.data import FashionMNIST
from svg_diffusion.diffusion.flow import flow_matching_loss
from svg_diffusion.diffusion.latent_transform import LatentTransform
from svg_diffusion.errors import SVGError
from svg_diffusion.evaluation import fid_stats
from svg_diffusion.evaluation.diagnose import NOISE_LEVELS, batched
from svg_diffusion.evaluation.fid import FeatureStats, frechet_distance
from svg_diffusion.export import same_latent
from svg_diffusion.pipeline import SVGPipeline
from svg_diffusion.sample_writer import class_labels, sample_noise
from svg_diffusion.utils.images import to_uint8

from reporting import Results
from reproduction_runs import arm_config, checkpoint_at, dit_transform, log, pipeline_at, shown

LOSS_TIMES = tuple((np.arange(10) + 0.5) / 10)  # t = 0.05, 0.15, ..., 0.95 (t = 1: data, t = 0: noise)
BATCH = 250
GLOBAL_DIRECTIONS = 64  # principal directions of whole latents for the global distance (1000 real latents fit them)


class RealLatents:
    """The first ``limit`` test images' labels and, per arm, their latents [N, C, h, w] (fp32, encoded once)."""

    def __init__(self, limit: int):
        self.dataset = FashionMNIST("test", image_size=32, limit=limit)
        self.images = torch.stack([self.dataset[i][0] for i in range(len(self.dataset))])
        self.labels = self.dataset.labels
        self._latents: dict[str, torch.Tensor] = {}

    def of(self, arm: str, autoencoder: Autoencoder) -> torch.Tensor:
        if arm not in self._latents:
            self._latents[arm] = batched(lambda x: autoencoder.encode(x).float(), self.images, BATCH)
        return self._latents[arm]


def position_vectors(x: torch.Tensor) -> np.ndarray:
    """[N, k, h, w] -> [N*h*w, k] float64: one vector per position."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]).double().numpy()


def global_projection(reference: torch.Tensor):
    """[N, k, h, w] latents -> [N, GLOBAL_DIRECTIONS] float64: each whole latent on the top principal directions
    of the flattened ``reference`` latents (what varies between images: layout, shape, class), so that latents
    of 256 or 1024 numbers compare in one dimension."""
    flat = reference.flatten(1).double().numpy()
    mean = flat.mean(0)
    _, vectors = np.linalg.eigh(np.cov(flat, rowvar=False))
    top = vectors[:, ::-1][:, :GLOBAL_DIRECTIONS]
    return lambda x: (x.flatten(1).double().numpy() - mean) @ top


def latent_distances(x_real: torch.Tensor, x_generated: torch.Tensor) -> dict[str, float]:
    """Fréchet distances, per position and global, of generated latents to the second half of the real ones, and
    of the first half of the real ones to it (the floor), each over the trace of the reference's covariance
    (scale-free, so coordinates of any number compare): equal counts on both sides, so the two carry the same
    estimation bias."""
    half = len(x_real) // 2
    reference, real, generated = x_real[half:], x_real[:half], x_generated[:half]
    distances = {}
    for name, vectors in (("position", position_vectors), ("global", global_projection(reference))):
        stats = FeatureStats.from_features(vectors(reference))
        scale = float(np.trace(stats.sigma))
        distances[name] = frechet_distance(stats, FeatureStats.from_features(vectors(generated))) / scale
        distances[f"{name}_real_halves"] = frechet_distance(stats, FeatureStats.from_features(vectors(real))) / scale
    return distances


@torch.no_grad()
def held_out_loss(pipe: SVGPipeline, x: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """The flow-matching loss of the pipeline's transformer on ``x`` (its coordinates) at each of ``LOSS_TIMES``
    (one fixed noise draw, no label dropped), and their mean."""
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=generator)
    per_time = {}
    for t in LOSS_TIMES:
        total = 0.0
        for i in range(0, len(x), BATCH):
            rows = slice(i, i + BATCH)
            times = torch.full((len(x[rows]),), float(t))
            total += float(flow_matching_loss(pipe.transformer, x[rows], labels[rows], noise[rows], times)) * len(x[rows])
        per_time[f"{t:.2f}"] = total / len(x)
    return {"mean": float(np.mean(list(per_time.values()))), "per_time": per_time}


@torch.no_grad()
def generated_latents(pipe: SVGPipeline, samples: int, num_steps: int, guidance_scale: float) -> torch.Tensor:
    """The FID stage's samples as latents: balanced labels, sample i from seed (0, i), bf16."""
    labels = class_labels(pipe, num=samples)
    return torch.cat([pipe(labels[i : i + BATCH], latents=sample_noise(pipe, range(i, min(i + BATCH, samples)), 0),
                           num_steps=num_steps, guidance_scale=guidance_scale, precision="bf16",
                           output_type="latent").float().cpu()
                      for i in range(0, samples, BATCH)])


def decoded_fid(autoencoder: Autoencoder, latents: torch.Tensor, fid) -> float:
    """FID of the images ``autoencoder`` decodes from ``latents`` against the FID stage's reference."""
    images = to_uint8(batched(lambda z: autoencoder.decode(z).clamp(-1, 1), latents, BATCH))
    return frechet_distance(fid.reference, fid_stats(images, fid.inception, progress=True))


@torch.no_grad()
def training_noise(autoencoder: Autoencoder, transform: LatentTransform, images: torch.Tensor) -> float:
    """The RMS noise, in the DiT's coordinates, of the latents the decoder was trained on: a KL autoencoder's
    decoder sees posterior samples mean + std·ε; an SVG autoencoder's sees the encoder's latent itself (0)."""
    if not isinstance(autoencoder, KLAutoencoder):
        return 0.0
    mean, logvar = batched(lambda x: torch.cat(autoencoder.posterior(x), 1), images, BATCH).chunk(2, dim=1)
    sampled = mean + (0.5 * logvar).exp() * torch.randn(mean.shape, generator=torch.Generator().manual_seed(0))
    return float((transform.encode(sampled) - transform.encode(mean)).square().mean().sqrt())


def measure_decoder_noise(arm: str, args, results: Results, fid, real: RealLatents) -> None:
    """rFID of the arm's decoder with noise of each std in ``NOISE_LEVELS`` added in its DiT's coordinates."""
    autoencoder = load_autoencoder(arm_config(arm, args.out, 1).autoencoder)
    transform: LatentTransform = dit_transform(arm, args, autoencoder)
    x = transform.encode(real.of(arm, autoencoder))
    if results.get("diagnosis", "decoder_training_noise", arm) is None:
        results.put(training_noise(autoencoder, transform, real.images), "diagnosis", "decoder_training_noise", arm)
    for level in NOISE_LEVELS:
        key = f"{level:g}"
        if results.get("diagnosis", "decoder_noise", arm, key) is not None:
            continue
        started = time.perf_counter()
        noisy = x + level * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
        rfid = decoded_fid(autoencoder, transform.decode(noisy), fid)
        results.put({"rfid": rfid, "images": len(noisy), "wall_s": time.perf_counter() - started},
                    "diagnosis", "decoder_noise", arm, key)
        log(f"{arm}: rFID with noise {key} in its DiT's coordinates: {rfid:.1f}")


def measure_latent_fit(arm: str, step: int, args, results: Results, real: RealLatents) -> None:
    """The arm's DiT after ``step`` steps against the real latents, in its coordinates (the module docstring)."""
    if results.get("diagnosis", "latent_fit", arm, str(step)) is not None:
        return
    started = time.perf_counter()
    checkpoint = checkpoint_at(arm, step, args, results, train=False)
    if checkpoint is None:  # the stage measures what the fid stage trained; it trains nothing itself
        log(f"{arm}: no checkpoint of step {step} (the fid stage trains and keeps them): latent fit skipped")
        return
    pipe = pipeline_at(arm, checkpoint, args)
    transform = pipe.latent_transform
    x_real = transform.encode(real.of(arm, pipe.autoencoder))
    sampling = arm_config("SVG", args.out, 1).sampling  # the FID stage's sampler, the same for every arm
    x_generated = transform.encode(generated_latents(pipe, args.samples, sampling.num_steps, sampling.guidance.scale))
    row = {"std_real": float(x_real.std()), "std_generated": float(x_generated.std()),
           "frechet": latent_distances(x_real, x_generated), "held_out_loss": held_out_loss(pipe, x_real, real.labels),
           "samples": len(x_generated), "real": len(x_real), "wall_s": time.perf_counter() - started}
    results.put(row, "diagnosis", "latent_fit", arm, str(step))
    distances = row["frechet"]
    log(f"{arm} step {step}: latent std {row['std_generated']:.3f} (real {row['std_real']:.3f}), relative "
        f"Fréchet per position {distances['position']:.4f} (real halves {distances['position_real_halves']:.4f}), "
        f"global {distances['global']:.3f} ({distances['global_real_halves']:.3f}), held-out loss "
        f"{row['held_out_loss']['mean']:.4f}")


def measure_other_decoder(arm: str, folder: str, args, results: Results, fid, real: RealLatents) -> None:
    """The arm's samples at the last of ``--diagnosis-at``, and its real latents through its DiT's transform,
    decoded by the autoencoder ``folder`` instead of the arm's (the module docstring)."""
    step = args.diagnosis_at[-1]
    if results.get("diagnosis", "other_decoder", arm, shown(folder), str(step)) is not None:
        return
    checkpoint = checkpoint_at(arm, step, args, results, train=False)
    if checkpoint is None:
        log(f"{arm}: no checkpoint of step {step} (the fid stage trains and keeps them): {shown(folder)} not measured")
        return
    own = load_autoencoder(arm_config(arm, args.out, 1).autoencoder)
    other = load_autoencoder(folder)
    try:
        same_latent(other, own, shown(folder), f"the {arm} arm's autoencoder")
    except SVGError as error:
        raise SystemExit(f"--other-decoder {arm} {folder}: {error}") from None
    pipe = pipeline_at(arm, checkpoint, args, autoencoder=other)
    sampling = arm_config("SVG", args.out, 1).sampling
    result = fid(pipe, sampling.num_steps, sampling.guidance.scale)
    transform = pipe.latent_transform
    rfid = decoded_fid(other, transform.decode(transform.encode(real.of(arm, own))), fid)
    results.put({**result, "rfid_through_transform": rfid, "checkpoint": shown(checkpoint)},
                "diagnosis", "other_decoder", arm, shown(folder), str(step))
    log(f"{arm} step {step} decoded by {shown(folder)}: FID {result['fid']:.2f}, rFID through its transform {rfid:.1f}")


def measure_diagnosis(args, results: Results, fid) -> None:
    """The stage: each arm's decoder noise rows (three Inception passes per arm; no DiT needed), each arm's latent
    fit at each of ``--diagnosis-at`` (sampling, no Inception), then the other decoders (two passes each)."""
    real = RealLatents(args.reference)
    for arm in args.arms:
        measure_decoder_noise(arm, args, results, fid, real)
    for step in args.diagnosis_at:
        for arm in args.arms:
            measure_latent_fit(arm, step, args, results, real)
    for arm, folder in args.other_decoder:
        measure_other_decoder(arm, folder, args, results, fid, real)
