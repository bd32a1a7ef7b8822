"""svg-diffusion: latent diffusion on the features of a frozen self-supervised encoder (SVG).

Data flows one way through the package:
data -> encoders (frozen) -> autoencoder -> latents -> diffusion (transformer + flow + samplers) -> evaluation.
"""

from .errors import SVGError

__version__ = "0.1.0"
__all__ = ["SVGError", "__version__"]
