"""The latent transform: the map between the autoencoder's latent and the space the transformer models.

    x = transform.encode(z)      # what the DiT is trained on and samples: [B, k, h, w]
    z = transform.decode(x)      # what autoencoder.decode takes:          [B, C, h, w]

Two kinds, both fitted once over the training latents and saved with the model:

- ``per_channel`` (:class:`~svg_diffusion.diffusion.latents.LatentStatistics`): ``(z - mean) / std`` per channel,
  k = C. The public SVG recipe, and the default (converted public checkpoints keep exact parity with it).
- ``pca`` (:class:`PCATransform`): standardize per channel as above, then project the C-value vector at each
  position onto the top-k principal directions of the training latents (one basis shared by all positions)
  and divide each coordinate by its std, so the DiT sees k whitened, decorrelated channels. ``decode`` maps
  back into the subspace (what lies outside it is set to the mean).

Why PCA. A representation latent is low-rank per position: on the demo latent (136 channels at 8×8) 16
directions hold 97% of the variance. Per-channel normalization gives all C channels unit variance, so the
DiT must also learn to keep ~120 nearly empty directions empty, which it does badly at small scale (the
generated latents carried 13× the real energy there, and the decoder draws it as artifacts). Modelling only
the top-k whitened coordinates removes that burden (docs/results.md, "Latent transform").

Fitting (:func:`fit_pca`, :class:`CovarianceMoments`) accumulates float64 sums of z and of z zᵀ over every
position of every training latent, shard by shard of a latent cache or batch by batch of encoded images, and
sums them over ranks under torch.distributed; the eigendecomposition is float64 and its signs are fixed
(each direction's largest entry is positive), so a fit is deterministic and the same for one process or N,
one piece or many (up to float64 summation order).

Saved as a folder (``save``/``load_latent_transform``): ``config.json`` (format, kind, k, C, the explained
variance) and ``transform.safetensors`` (float32 ``mean``, ``std``, ``components`` [k, C], ``scales`` [k], and
the float64 ``eigenvalues`` [C] of the whole spectrum, which ``diagnose`` plots).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal, Union

import torch
from safetensors.torch import save_file

from ..config import ConfigPath
from ..errors import SVGError
from ..training.distributed import all_reduce_
from ..utils.checks import check_int, check_number
from ..utils.files import atomic_path
from ..utils.pretrained import read_format_file, read_state_file, write_json
from .latents import LatentMoments, LatentStatistics

FORMAT = "svg-diffusion-latent-transform"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "transform.safetensors"
KINDS = ("per_channel", "pca")


@dataclass
class LatentTransformConfig:
    """Which transform a diffusion run models its latents through (the ``latent_transform`` config section).

    - ``kind``: ``per_channel`` (k = C, the public recipe) or ``pca``;
    - ``components`` (k) or ``explained_variance`` (the smallest k whose directions hold at least that fraction
      of the variance), for ``pca``; neither: k = C (whitening only);
    - ``path``: a transform folder written by ``svg-diffusion fit-latent-transform`` to use as it is (its kind
      and k must match); None: ``train`` fits it over the training latents and saves it in its ``out_dir``.
    """

    kind: Literal["per_channel", "pca"] = "per_channel"
    components: int | None = None
    explained_variance: float | None = None
    path: ConfigPath | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"latent_transform.kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.components is not None:
            check_int("components", self.components, at_least=1)
        if self.explained_variance is not None:
            check_number("explained_variance", self.explained_variance, above=0, at_most=1)
        if self.components is not None and self.explained_variance is not None:
            raise ValueError("latent_transform: give components or explained_variance, not both")
        if self.kind == "per_channel" and (self.components is not None or self.explained_variance is not None):
            raise ValueError("latent_transform: components / explained_variance are options of kind 'pca'")


class PCATransform:
    """Per-channel standardization, then the top-k whitened principal coordinates at every position.

    ``mean``/``std`` [C] standardize; ``components`` [k, C] are orthonormal rows (principal directions of the
    standardized latent, by decreasing variance); ``scales`` [k] their stds; ``eigenvalues`` [C] the whole
    spectrum (float64, for diagnostics: the variance each direction holds, in standardized units).
    """

    kind = "pca"

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, components: torch.Tensor, scales: torch.Tensor,
                 eigenvalues: torch.Tensor):
        self.stats = LatentStatistics(mean, std)
        self.components = torch.as_tensor(components, dtype=torch.float32)
        self.scales = torch.as_tensor(scales, dtype=torch.float32).flatten()
        self.eigenvalues = torch.as_tensor(eigenvalues, dtype=torch.float64).flatten()
        k, c = self.components.shape
        if c != self.stats.channels or self.scales.numel() != k or self.eigenvalues.numel() != c:
            raise SVGError(f"PCA transform: components {tuple(self.components.shape)}, scales {self.scales.numel()}, "
                           f"eigenvalues {self.eigenvalues.numel()} do not fit {self.stats.channels} channels")
        if not bool((self.scales > 0).all()) or not bool(torch.isfinite(self.components).all()):
            raise SVGError("PCA transform: every scale must be positive and every component finite")

    @property
    def latent_channels(self) -> int:
        """C: channels of the autoencoder's latent."""
        return self.stats.channels

    @property
    def channels(self) -> int:
        """k: channels the transformer models."""
        return self.components.shape[0]

    @property
    def explained_variance(self) -> float:
        """The fraction of the (standardized) variance the k directions hold."""
        return float(self.eigenvalues[: self.channels].sum() / self.eigenvalues.sum())

    def encode(self, z: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] latents -> [B, k, h, w] whitened coordinates (float32)."""
        u = self.stats.normalize(z)
        components, scales = self.components.to(u.device), self.scales.to(u.device)
        return torch.einsum("kc,bchw->bkhw", components, u) / scales.view(1, -1, 1, 1)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """[B, k, h, w] coordinates -> [B, C, h, w] latents in the subspace (float32)."""
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise SVGError(f"expected [B, {self.channels}, h, w] PCA coordinates, got shape {tuple(x.shape)}")
        components, scales = self.components.to(x.device), self.scales.to(x.device)
        u = torch.einsum("kc,bkhw->bchw", components, x.float() * scales.view(1, -1, 1, 1))
        return self.stats.denormalize(u)

    def state(self) -> dict[str, torch.Tensor]:
        return {"mean": self.stats.mean, "std": self.stats.std, "components": self.components,
                "scales": self.scales, "eigenvalues": self.eigenvalues}

    def save(self, folder: str | Path) -> Path:
        """``folder/config.json`` + ``folder/transform.safetensors`` (:func:`save_latent_transform`)."""
        return save_latent_transform(self, folder)


LatentTransform = Union[LatentStatistics, PCATransform]


def transform_state(transform: LatentTransform) -> dict:
    """The tensors of a transform and its kind, for a training checkpoint (plain containers only)."""
    if isinstance(transform, PCATransform):
        return {"kind": "pca", **transform.state()}
    return {"kind": "per_channel", "mean": transform.mean, "std": transform.std}


def transform_from_state(state: dict) -> LatentTransform:
    """The inverse of :func:`transform_state`."""
    tensors = {key: value for key, value in state.items() if key != "kind"}
    if state["kind"] == "pca":
        return PCATransform(**tensors)
    return LatentStatistics(**tensors)


def save_latent_transform(transform: LatentTransform, folder: str | Path) -> Path:
    """A transform folder of either kind: ``config.json`` + ``transform.safetensors``, each written atomically."""
    folder = Path(folder)
    state = transform_state(transform)
    kind = state.pop("kind")
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        save_file({name: value.contiguous() for name, value in state.items()}, str(tmp), metadata={"format": FORMAT})
    description = {"format": FORMAT, "kind": kind, "components": transform.channels,
                   "latent_channels": transform.latent_channels}
    if isinstance(transform, PCATransform):
        description["explained_variance"] = round(transform.explained_variance, 6)
    write_json(folder / CONFIG_FILE, description)
    return folder


def load_latent_transform(folder: str | Path) -> LatentTransform:
    """A transform folder written by :func:`save_latent_transform` (either kind)."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    config = read_format_file(path, FORMAT, "a latent transform folder",
                              " (write one with `svg-diffusion fit-latent-transform`)")
    state = read_state_file(folder / WEIGHTS_FILE)
    expected = {"per_channel": {"mean", "std"}, "pca": {"mean", "std", "components", "scales", "eigenvalues"}}
    kind = config.get("kind")
    if kind not in expected:
        raise SVGError(f"{path}: unknown latent transform kind {kind!r} (known: {', '.join(expected)})")
    if set(state) != expected[kind]:
        raise SVGError(f"{folder / WEIGHTS_FILE}: a {kind} transform holds {sorted(expected[kind])}, found {sorted(state)}")
    return transform_from_state({"kind": kind, **state})


# ---------------------------------------------------------------------------------------------------------
# Fitting
# ---------------------------------------------------------------------------------------------------------


class CovarianceMoments:
    """Count, sum [C] and sum of outer products [C, C] of the C-value vectors at every latent position (float64)."""

    def __init__(self, channels: int, device: torch.device | str = "cpu"):
        self.count = 0
        self.sum = torch.zeros(channels, dtype=torch.float64, device=device)
        self.outer = torch.zeros(channels, channels, dtype=torch.float64, device=device)

    def add(self, z: torch.Tensor) -> None:
        """Add latents [B, C, h, w]."""
        vectors = z.detach().to(self.sum.device, torch.float64).permute(0, 2, 3, 1).reshape(-1, self.sum.numel())
        self.sum += vectors.sum(0)
        self.outer += vectors.T @ vectors
        self.count += vectors.shape[0]

    def all_reduce(self) -> None:
        """Sum the moments of every rank (a no-op in one process); every rank must call it."""
        packed = torch.cat([self.sum, self.outer.flatten(), self.sum.new_tensor([self.count])])
        all_reduce_(packed)
        c = self.sum.numel()
        self.sum, self.outer, self.count = packed[:c], packed[c:-1].view(c, c), int(packed[-1].item())

    def covariance(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean [C] and unbiased covariance [C, C] (float64)."""
        if self.count < 2:
            raise SVGError("a PCA fit needs at least two latent vectors")
        mean = self.sum / self.count
        covariance = (self.outer - self.count * torch.outer(mean, mean)) / (self.count - 1)
        return mean, (covariance + covariance.T) / 2


def choose_components(eigenvalues: torch.Tensor, components: int | None = None,
                      explained_variance: float | None = None) -> int:
    """k: as given, or the fewest leading directions holding ``explained_variance`` of the total, or all."""
    total = eigenvalues.numel()
    if components is not None:
        if not 1 <= components <= total:
            raise SVGError(f"PCA: {components} components asked of a {total}-channel latent")
        return components
    if explained_variance is None:
        return total
    cumulative = torch.cumsum(eigenvalues, 0) / eigenvalues.sum()
    # The tolerance keeps a fraction of exactly 1.0 from asking for more than every direction.
    return min(int((cumulative < explained_variance - 1e-12).sum().item()) + 1, total)


def pca_from_moments(moments: CovarianceMoments, components: int | None = None,
                     explained_variance: float | None = None) -> PCATransform:
    """The whitened top-k PCA transform of the latents behind ``moments`` (see the module docstring)."""
    mean, covariance = moments.covariance()
    std = covariance.diagonal().clamp_min(0).sqrt()
    if not bool((std > 0).all()):
        raise SVGError(f"PCA: latent channel(s) {(std == 0).nonzero().flatten().tolist()[:5]} are constant")
    correlation = covariance / torch.outer(std, std)
    eigenvalues, vectors = torch.linalg.eigh(correlation)  # ascending
    eigenvalues, vectors = eigenvalues.flip(0).clamp_min(0), vectors.flip(1).T  # rows, by decreasing variance
    # eigh's signs are arbitrary: make each direction's largest-magnitude entry positive, so a fit is reproducible.
    signs = torch.sign(vectors.gather(1, vectors.abs().argmax(1, keepdim=True)))
    vectors = vectors * signs
    k = choose_components(eigenvalues, components, explained_variance)
    if not bool((eigenvalues[:k] > 0).all()):
        raise SVGError(f"PCA: the latent has fewer than {k} directions with any variance: ask for fewer components")
    return PCATransform(mean, std, vectors[:k], eigenvalues[:k].sqrt(), eigenvalues)


def fit_pca(latent_batches: Iterable[torch.Tensor], channels: int, components: int | None = None,
            explained_variance: float | None = None, device: torch.device | str = "cpu") -> PCATransform:
    """Fit over ``latent_batches`` ([B, C, h, w] each; this rank's share under torch.distributed)."""
    moments = CovarianceMoments(channels, device)
    for z in latent_batches:
        moments.add(z)
    moments.all_reduce()
    return pca_from_moments(moments, components, explained_variance)


def fit_latent_transform(config: LatentTransformConfig, latent_batches: Iterable[torch.Tensor], channels: int,
                         device: torch.device | str = "cpu") -> LatentTransform:
    """A transform of ``config.kind`` fitted over ``latent_batches`` (this rank's share; all ranks must call it)."""
    if config.kind == "pca":
        return fit_pca(latent_batches, channels, config.components, config.explained_variance, device)
    moments = LatentMoments(channels, device)
    for z in latent_batches:
        moments.add(z)
    moments.all_reduce()
    return moments.statistics()


def check_transform(transform: LatentTransform, config: LatentTransformConfig, latent_channels: int,
                    where: str) -> LatentTransform:
    """``transform`` if it is of the kind and size ``config`` asks for and fits the latent; else a clear error."""
    if transform.kind != config.kind:
        raise SVGError(f"{where}: a {transform.kind} transform, but latent_transform.kind is {config.kind!r}")
    c = transform.latent_channels
    if c != latent_channels:
        raise SVGError(f"{where}: a transform of {c}-channel latents, the autoencoder's latent has {latent_channels}")
    if config.components is not None and transform.channels != config.components:
        raise SVGError(f"{where}: {transform.channels} components, latent_transform.components is {config.components}")
    if config.explained_variance is not None and transform.explained_variance < config.explained_variance - 1e-6:
        raise SVGError(f"{where}: explains {transform.explained_variance:.4f} of the variance, "
                       f"latent_transform.explained_variance asks {config.explained_variance}")
    return transform


def off_subspace_energy(transform: PCATransform, z: torch.Tensor) -> torch.Tensor:
    """Mean squared norm per position of the standardized latent outside the transform's subspace (float64 scalar)."""
    u = transform.stats.normalize(z).double()
    inside = transform.stats.normalize(transform.decode(transform.encode(z))).double()
    return (u - inside).square().sum(1).mean()

