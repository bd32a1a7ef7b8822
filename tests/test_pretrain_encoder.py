"""`pretrain-encoder`: DINO/iBOT/KoLeo self-distillation of our ViT on real Fashion-MNIST images.

Tiny runs (the "tiny" ViT, 16-image batches) check that the loss goes down, that the teacher moves only by
EMA, that a resumed run ends bit-identical, and that the exported teacher loads as a frozen encoder. The
multi-crop augmentation and the iBOT masks are checked on their own; two gloo processes against one
process (the head's cross-rank BatchNorm and KoLeo) is a slow test.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch

from svg_diffusion.cli import main
from svg_diffusion.config import ConfigError, from_dict, load_config, save_config
from svg_diffusion.data import FashionMNIST
from svg_diffusion.encoders import FrozenEncoder, load_encoder
from svg_diffusion.encoders.multi_crop import VIEW_DRAWS, MultiCrop, MultiCropConfig
from svg_diffusion.encoders.patch_masks import blob_masks
from svg_diffusion.trainers.encoder import DistillationTrainer, PretrainEncoderConfig, cosine, pretrain_encoder
from svg_diffusion.training import Engine, checkpoint_path, load_checkpoint, read_records

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: see conftest.py


def tiny_config(out_dir, **overrides) -> PretrainEncoderConfig:
    engine = dict(out_dir=str(out_dir), max_steps=4, global_batch_size=16, log_every=1, checkpoint_every=2,
                  num_workers=0, device="cpu", seed=3)
    engine.update(overrides.pop("engine", {}))
    settings = dict(
        engine=engine,
        data=dict(source="fashion_mnist", image_size=32, hflip=True, limit=256),
        encoder="tiny", head_prototypes=64, head_hidden_dim=64, head_bottleneck_dim=32, lr=5e-4,
        teacher_momentum=0.996, teacher_temp=0.04, crops=dict(local_crops=2, blur_sigma=[0.1, 1.0]),
    )
    settings.update(overrides)
    return from_dict(PretrainEncoderConfig, settings)


def test_loss_decreases_on_a_tiny_run(fmnist_dir, tmp_path):
    cfg = tiny_config(tmp_path, engine=dict(max_steps=30, log_every=10, checkpoint_every=30))
    pretrain_encoder(cfg)
    records = read_records(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [10, 20, 30]
    for name in ("dino_loss", "ibot_loss", "loss"):
        assert records[-1][name] < records[0][name] - 0.1, (name, [r[name] for r in records])
    # the teacher is not collapsed: its output depends on the image
    assert records[-1]["teacher_batch_entropy"] - records[-1]["teacher_entropy"] > cfg.collapse_threshold


def test_teacher_is_updated_only_by_ema_of_the_student(fmnist_dir, tmp_path):
    cfg = tiny_config(tmp_path, engine=dict(max_steps=1, checkpoint_every=1))
    engine = Engine(cfg.engine)
    trainer = DistillationTrainer(cfg, engine.device)
    before = {name: value.clone() for name, value in trainer.teacher.state_dict().items()}
    assert all(not p.requires_grad for p in trainer.teacher.parameters())
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in trainer.teacher.parameters()}

    engine.fit(trainer, FashionMNIST("train", limit=64))
    momentum = cosine(0, cfg.engine.max_steps, cfg.teacher_momentum, 1.0)
    student = trainer.student.state_dict()
    changed = 0
    for name, value in trainer.teacher.state_dict().items():
        assert torch.equal(value, before[name].lerp(student[name].float(), 1 - momentum)), name
        changed += not torch.equal(value, before[name])
    assert changed > 10  # the student moved, so did the teacher
    assert all(p.grad is None for p in trainer.teacher.parameters())


def test_resume_is_exact(fmnist_dir, tmp_path):
    straight = tmp_path / "straight"
    pretrain_encoder(tiny_config(straight))
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    checkpoint_path(resumed, 4).unlink()
    pretrain_encoder(tiny_config(resumed), resume=True)

    expected, got = load_checkpoint(checkpoint_path(straight, 4)), load_checkpoint(checkpoint_path(resumed, 4))
    for key, value in expected["modules"]["student"].items():
        assert torch.equal(got["modules"]["student"][key], value), key
    for key, value in expected["trainer"]["teacher"]["shadow"].items():
        assert torch.equal(got["trainer"]["teacher"]["shadow"][key], value), key
    assert torch.equal(got["trainer"]["center"], expected["trainer"]["center"])
    assert torch.equal(got["trainer"]["patch_center"], expected["trainer"]["patch_center"])
    assert [r["loss"] for r in read_records(resumed / "metrics.jsonl")] == [
        r["loss"] for r in read_records(straight / "metrics.jsonl")]


def test_exported_teacher_loads_with_load_encoder_and_is_frozen(fmnist_dir, tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    save_config(tiny_config(tmp_path / "run", engine=dict(max_steps=2)), config)
    assert main(["pretrain-encoder", "--config", str(config)]) == 0
    folder = tmp_path / "run" / "encoder"
    assert capsys.readouterr().out.strip().endswith(str(folder))
    encoder = load_encoder(folder)
    assert isinstance(encoder, FrozenEncoder) and encoder.config.attn_impl == "sdpa"  # the named config's
    assert all(not p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.training

    # It is the teacher's backbone: the same weights as the checkpoint's EMA teacher.
    checkpoint = checkpoint_path(tmp_path / "run", 2)
    shadow = load_checkpoint(checkpoint)["trainer"]["teacher"]["shadow"]
    for name, value in encoder.vit.state_dict().items():
        assert torch.equal(value, shadow[f"backbone.{name}"]), name
    images = torch.stack([FashionMNIST("test", limit=4)[i][0] for i in range(4)])
    features = encoder(images)
    assert features.shape == (4, 64, 8, 8) and not features.requires_grad

    # --export: a checkpoint's teacher, without training
    exported = tmp_path / "exported"
    assert main(["pretrain-encoder", "--config", str(config), "--export", str(checkpoint),
                 "--set", f"export_dir={exported}"]) == 0
    assert torch.equal(load_encoder(exported)(images), features)
    assert main(["pretrain-encoder", "--config", str(config), "--export", str(tmp_path / "step_9.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_multicrop_views_are_crops_flips_and_functions_of_the_draws(fmnist_dir):
    images = torch.stack([FashionMNIST("test", limit=6)[i][0] for i in range(6)])
    plain = MultiCropConfig(global_crop_scale=(1.0, 1.0), local_crops=1, jitter_probability=0, grayscale_probability=0,
                            blur_probability=(0, 0, 0), solarize_probability=0)
    draws = torch.rand(6, plain.num_views, len(VIEW_DRAWS), generator=torch.Generator().manual_seed(0))
    draws[:, :, VIEW_DRAWS.index("flip")] = 0.9
    draws[:, :, VIEW_DRAWS.index("aspect")] = 0.5  # aspect ratio 1: with area 1, the whole image
    global_crops, local_crops = MultiCrop(plain, hflip=True)(images, draws)
    # the whole image at full size: an identity resampling
    torch.testing.assert_close(global_crops, torch.cat([images, images]), atol=1e-5, rtol=0)
    assert local_crops.shape == (6, 3, 16, 16)
    draws[:3, 0, VIEW_DRAWS.index("flip")] = 0.1
    flipped, _ = MultiCrop(plain, hflip=True)(images, draws)
    torch.testing.assert_close(flipped[:3], images[:3].flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(flipped[3:6], images[3:], atol=1e-5, rtol=0)

    full = MultiCrop(MultiCropConfig(), hflip=True)
    draws = torch.rand(6, 8, len(VIEW_DRAWS), generator=torch.Generator().manual_seed(1))
    first, second = full(images, draws), full(images, draws.clone())
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert first[0].shape == (12, 3, 32, 32) and first[1].shape == (36, 3, 16, 16)
    assert first[0].min() >= -1 and first[0].max() <= 1
    # each image's views depend only on its own draws (so a rank's slice of the global draw gives its rows)
    part = full(images[2:4], draws[2:4])
    torch.testing.assert_close(part[0], first[0][[2, 3, 8, 9]], atol=1e-6, rtol=0)


def test_blob_masks_mask_the_drawn_fraction_of_the_selected_images():
    draws = torch.rand(400, 2 + 64, generator=torch.Generator().manual_seed(0))
    masks = blob_masks(draws, grid=8, probability=0.5, ratio=(0.1, 0.5))
    selected = draws[:, 0] < 0.5
    expected = (0.1 + 0.4 * draws[:, 1]) * 64
    assert torch.equal(masks.sum(1).float(), torch.where(selected, expected.round(), torch.zeros_like(expected)))
    assert 150 < selected.sum() < 250
    # blobs: a masked patch has more masked 4-neighbours than under random masks of the same size (about
    # the masked fraction: neighbours are counted around the torus)
    grid = masks[selected].view(-1, 8, 8).float()
    neighbours = sum(torch.roll(grid, shift, dim) for shift in (1, -1) for dim in (1, 2))
    masked_neighbours = (neighbours * grid).sum((1, 2)) / (4 * grid.sum((1, 2)))
    assert masked_neighbours.mean() > grid.mean((1, 2)).mean() + 0.15


def test_config_errors_name_the_key(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("engine: {out_dir: x, max_steps: 1, global_batch_size: 2}\ndata: {source: fashion_mnist}\n"
                    "crops: {local_crop_size: 10}\n")
    with pytest.raises(ConfigError, match="local_crop_size 10 is not a multiple of the patch size 4"):
        load_config(PretrainEncoderConfig, path)
    assert main(["pretrain-encoder", "--config", str(path), "--set", "encoder=vit_huge"]) == 2
    assert "encoder must be one of" in capsys.readouterr().err


def test_shipped_configs_load():
    cfg = load_config(PretrainEncoderConfig, REPO / "configs/demo/pretrain_encoder.yaml")
    assert cfg.encoder == "demo" and cfg.engine.precision == "bf16"
    assert cfg.export_path == REPO / "src/svg_diffusion/assets/demo_encoder"  # relative to the config's folder
    cfg = load_config(PretrainEncoderConfig, REPO / "configs/imagenet/pretrain_encoder.yaml")
    assert cfg.encoder == "dinov3_vits16plus" and cfg.crops.local_crop_size % 16 == 0


# -------------------------------------------------------------------------------- two processes (slow)

# The comparison starts from a checkpoint after a few steps: at initialization every image gives nearly the
# same class token: the head's BatchNorm amplifies float rounding (a mere permutation of the batch
# changes some gradients by 10%) and KoLeo's nearest neighbours are near ties, so the first steps of two
# mathematically equal runs drift apart.
WARM_STEPS, DISTRIBUTED_STEPS = 30, 32


def _distributed_config(out_dir) -> PretrainEncoderConfig:
    return tiny_config(out_dir, engine=dict(max_steps=DISTRIBUTED_STEPS, checkpoint_every=WARM_STEPS))


@pytest.mark.slow
def test_two_processes_compute_what_one_process_computes(fmnist_dir, tmp_path, torchrun):
    one, two = tmp_path / "one", tmp_path / "two"
    pretrain_encoder(_distributed_config(one))
    shutil.copytree(one, two)
    checkpoint_path(two, DISTRIBUTED_STEPS).unlink()
    torchrun(__file__, two)
    single = load_checkpoint(checkpoint_path(one, DISTRIBUTED_STEPS))
    double = load_checkpoint(checkpoint_path(two, DISTRIBUTED_STEPS))
    for key, value in single["modules"]["student"].items():
        torch.testing.assert_close(double["modules"]["student"][key], value, atol=2e-5, rtol=1e-3, msg=key)
    for name in ("center", "patch_center"):
        torch.testing.assert_close(double["trainer"][name], single["trainer"][name], atol=1e-5, rtol=1e-4)
    records = [read_records(run / "metrics.jsonl")[-DISTRIBUTED_STEPS + WARM_STEPS:] for run in (one, two)]
    for name in ("loss", "dino_loss", "ibot_loss", "koleo_loss"):
        assert [r[name] for r in records[0]] == pytest.approx([r[name] for r in records[1]], rel=1e-3), name


if __name__ == "__main__":  # a rank of the two-process test: resume the copied run
    pretrain_encoder(_distributed_config(sys.argv[1]), resume=True)
