#!/usr/bin/env bash
# The shipped demo pipeline (demo-pipeline: src/svg_diffusion/assets/demo_pipeline), from nothing, with this
# project's commands.
#
#   scripts/reproduce_demo.sh            # the shipped configs (configs/demo/*.yaml): ~8.1 h of one CPU core;
#                                        # overwrites the shipped encoder and pipeline (git diff shows what changed)
#   scripts/reproduce_demo.sh --quick    # configs/demo/quick/*.yaml: the same architecture, shorter runs, all
#                                        # under runs/demo_quick (~20 min estimated, docs/demo.md); the shipped files are untouched
#
# Seeds: every training is seeded by its config's engine.seed (0 in each); the grid by `demo --seed 0`.
# Runs in the repository (from any folder) after `make setup`; SVG_DIFFUSION and PYTHON override the venv's command
# and python (paths relative to the repository).
# Every stage runs again on a rerun (to continue a stopped training, run its command by hand with --resume).
set -euo pipefail
cd "$(dirname "$0")/.."

SVG=${SVG_DIFFUSION:-.venv/bin/svg-diffusion}
PYTHON=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}

case "${1:-}" in
  "")
    configs=configs/demo
    encoder=src/svg_diffusion/assets/demo_encoder            # pretrain_encoder.yaml's export_dir (demo-pretrained)
    pipeline=runs/demo/pipeline                              # the MeanFlow DiT's pipeline with the fine-tuned decoder
    total=10
    ;;
  --quick)
    configs=configs/demo/quick
    encoder=runs/demo_quick/encoder
    pipeline=runs/demo_quick/diffusion/pipeline
    total=6
    ;;
  *)
    echo "usage: $0 [--quick]" >&2
    exit 2
    ;;
esac

stage() { echo; echo "== $(date -u +%H:%M:%S) $*"; }

stage "1/$total pretrain the encoder (DINO + iBOT + KoLeo) -> $encoder"
$SVG pretrain-encoder --config "$configs/pretrain_encoder.yaml"

stage "2/$total train the autoencoder on the frozen encoder"
$SVG train-autoencoder --config "$configs/autoencoder.yaml"

stage "3/$total encode the training images once (latent cache + exact latent statistics)"
$SVG cache-latents --config "$configs/diffusion.yaml"

stage "4/$total train the diffusion transformer on the latent's PCA directions"
$SVG train --config "$configs/diffusion.yaml"

if [ -z "${1:-}" ]; then
  stage "5/10 fine-tune the decoder with the critic (the latent stays the same)"
  $SVG train-autoencoder --config "$configs/decoder_finetune.yaml" --set init_from=runs/demo/autoencoder/autoencoder
  stage "6/10 MeanFlow fine-tune of the DiT (it keeps 25-step Euler sampling and adds 1-4 step sampling)"
  $SVG train --config "$configs/mean_flow.yaml"
  stage "7/10 fine-tune that decoder on the DiT's own latent space (PCA projection + noise)"
  $SVG train-autoencoder --config "$configs/decoder_noise.yaml" --set init_from=runs/demo/decoder_finetune/autoencoder \
    --set latent_noise_transform=runs/demo/mean_flow/pipeline
  stage "8/10 a slimmer decoder (one residual block per level) from that one, the same way; give it to the DiT"
  $SVG train-autoencoder --config "$configs/decoder_noise.yaml" --set init_from=runs/demo/decoder_noise/autoencoder \
    --set latent_noise_transform=runs/demo/mean_flow/pipeline --set engine.out_dir=runs/demo/decoder_slim \
    --set engine.max_steps=2000 --set model.decoder.num_res_blocks=0 --set init_from_subset=true
  $SVG export runs/demo/mean_flow --out runs/demo/pipeline_slim --autoencoder runs/demo/decoder_slim/autoencoder
  stage "9/10 that decoder on the DiT's one-step estimates too (the latents few-step samplers end with) -> $pipeline"
  $SVG train-autoencoder --config "$configs/decoder_denoise.yaml" --set init_from=runs/demo/pipeline_slim \
    --set latent_noise_transform=runs/demo/pipeline_slim --set latent_denoiser=runs/demo/pipeline_slim
  $SVG export runs/demo/mean_flow --out "$pipeline" --autoencoder runs/demo/decoder_denoise/autoencoder
  stage "10/10 ship it: float16 weights sharing the encoder, SHA256SUMS -> src/svg_diffusion/assets/demo_pipeline"
  "$PYTHON" -c "from svg_diffusion.demo import export_demo_pipeline; print(export_demo_pipeline('$pipeline'))"
  stage "the demo grid"
  $SVG demo --seed 0
else
  stage "5/6 the demo grid from the quick pipeline (the quick run keeps the autoencoder's decoder: no MeanFlow, no shipping)"
  $SVG demo --seed 0 --pipeline "$pipeline" --out-dir outputs/demo_quick
fi
