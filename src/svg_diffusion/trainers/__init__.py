"""The trainers, on top of the stack (they build models, pipelines and sample grids; nothing below imports them).

- :mod:`.encoder`: self-supervised (DINO/iBOT/KoLeo) pretraining of a ViT encoder (``pretrain-encoder``);
- :mod:`.autoencoder`: the SVG autoencoder (``train-autoencoder``);
- :mod:`.diffusion`: the latent diffusion transformer (``train``, ``cache-latents``, ``latent-stats``).

Each runs on the shared engine of :mod:`svg_diffusion.training`. Import them by module, e.g.
``from svg_diffusion.trainers.diffusion import DiffusionTrainConfig, train_diffusion``.
"""
