"""Reading the public SVG release into our pipeline folder (``svg-diffusion convert-official``).

The public code (github shiml20/SVG, weights on the Hugging Face repo howlin/SVG) ships four kinds of file
(the table in docs/official.md, "The files"), one reader each: ``autoencoder`` (the Lightning checkpoint +
its YAML), ``transformer`` (the DiT + its YAML), ``latent_stats`` (``dinov3_sp_stats.pt``) and Meta's DINOv3
``.pth``, which ``svg_diffusion.encoders`` reads. ``files`` opens them with ``torch.load(weights_only=True)``,
so no file can run code, unless the user opts in with ``trust_pickle=True`` (``--trust-pickle``) for files
holding other pickled objects; ``convert`` writes the pipeline folder.

Every key is accounted for: a key we do not know, a key the architecture needs but the file lacks, or a
shape that does not fit the YAML raises SVGError naming the keys in the public file's own names.

Conventions carried over, so the converted pipeline computes what the public code computes (docs/official.md,
"What is read from where"):

- Images: the public model takes ImageNet-normalized images; ours takes [-1, 1] images and normalizes
  them itself (the same affine map, folded into one multiply-add).
- Alignment: ``use_outnorm: true`` is the public batch-statistics alignment, so the converted autoencoder
  uses alignment mode ``batch`` (a latent then depends on its batch, as in the public code). To get
  batch-independent latents, estimate running statistics (``estimate_alignment_statistics``) and switch
  ``autoencoder.alignment.mode`` to ``"running"``. ``use_outnorm: false`` (or absent) is mode ``none``.
- Latent normalization: the public training divides the token-layout latent by the statistics file when
  its YAML says ``basic.feature_norm: true`` (``(z - mean) / std``; sampling multiplies back), using the
  first C channels of the file. Our pipeline always applies ``latent_stats``; a model trained without
  ``feature_norm`` gets mean 0 / std 1.
- Tokens: the public transformer takes ``[B, T, C]`` = ``z.flatten(2).transpose(1, 2)``; ours takes
  ``[B, C, h, w]``. Public noise ``n`` [B, T, C] is our ``n.transpose(1, 2).reshape(B, C, h, w)``.
- Time grid: :func:`public_time_grid` is the public sampler's (float32 linspace, shifted in float64); our
  ``time_grid`` differs from it by at most one float32 ulp per point.
"""

from .convert import convert_official
from .time_grid import public_time_grid

__all__ = ["convert_official", "public_time_grid"]
