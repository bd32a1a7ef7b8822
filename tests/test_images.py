"""utils.images: uint8 round trips, PIL conversion, PNG grids (with row labels) and PCA pictures."""

import numpy as np
import pytest
import torch
from PIL import Image

from svg_diffusion.errors import SVGError
from svg_diffusion.utils import from_uint8, pca_rgb, save_image_grid, to_pil, to_uint8


def test_uint8_round_trip_is_exact():
    pixels = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16).expand(2, 3, 16, 16)
    images = from_uint8(pixels)
    assert images.min() == -1 and images.max() == 1
    back = to_uint8(images)
    assert back.shape == (2, 16, 16, 3) and back.dtype == np.uint8
    assert np.array_equal(back, pixels.permute(0, 2, 3, 1).numpy())
    assert to_uint8(torch.tensor([-3.0, 3.0]).reshape(1, 1, 2)).ravel().tolist() == [0, 255]  # clipped


def test_to_pil_rgb_and_grayscale():
    rgb = to_pil(torch.stack([torch.full((4, 6), v) for v in (-1.0, 0.0, 1.0)]))
    assert rgb.mode == "RGB" and rgb.size == (6, 4) and rgb.getpixel((0, 0)) == (0, 128, 255)
    gray = to_pil(torch.zeros(1, 4, 6))
    assert gray.mode == "L" and gray.getpixel((5, 3)) == 128
    with pytest.raises(SVGError, match="one image"):
        to_pil(torch.zeros(2, 3, 4, 4))
    with pytest.raises(SVGError, match="C = 1 or 3"):
        to_uint8(torch.zeros(2, 4, 4, 4))


def test_save_image_grid_layout_and_cells(tmp_path):
    images = from_uint8(torch.arange(10, dtype=torch.uint8).mul(20).reshape(10, 1, 1, 1).expand(10, 3, 8, 8))
    path = save_image_grid(images, tmp_path / "sub" / "grid.png", nrow=4, padding=2)
    grid = np.asarray(Image.open(path))
    assert grid.shape == (3 * 8 + 4 * 2, 4 * 8 + 5 * 2, 3)  # 3 rows of at most 4
    assert grid[2, 2].tolist() == [0, 0, 0] and grid[2 + 10, 2 + 3 * 10].tolist() == [140] * 3  # images 0 and 7
    assert grid[0, 0].tolist() == [255, 255, 255]  # padding
    assert grid[22, 2 + 2 * 10].tolist() == [255, 255, 255]  # the empty cells after image 9
    assert sorted(p.name for p in path.parent.iterdir()) == ["grid.png"]  # no temporary file left


def test_save_image_grid_row_labels_draw_a_left_margin(tmp_path):
    images = torch.full((6, 3, 32, 32), -1.0)
    plain = np.asarray(Image.open(save_image_grid(images, tmp_path / "plain.png", nrow=3)))
    labelled_path = save_image_grid(images, tmp_path / "labels.png", nrow=3, row_labels=["Sneaker", "Bag"])
    labelled = np.asarray(Image.open(labelled_path))
    margin = labelled.shape[1] - plain.shape[1]
    assert labelled.shape[0] == plain.shape[0] and margin > 20
    assert np.array_equal(labelled[:, margin:], plain)  # the images are only shifted right
    first_row, second_row = labelled[2:34, :margin], labelled[36:68, :margin]
    assert (first_row < 128).any() and (second_row < 128).any()  # text in each row's margin
    with pytest.raises(SVGError, match="3 row labels for a grid of 2 rows"):
        save_image_grid(images, tmp_path / "bad.png", nrow=3, row_labels=["a", "b", "c"])


def test_save_image_grid_accepts_grayscale_batches(tmp_path):
    path = save_image_grid(torch.ones(3, 1, 5, 5), tmp_path / "gray.png", nrow=8, padding=0)
    grid = Image.open(path)
    assert grid.mode == "RGB" and grid.size == (15, 5) and grid.getpixel((7, 2)) == (255, 255, 255)


def test_pca_rgb_finds_the_dominant_direction():
    generator = torch.Generator().manual_seed(0)
    batch, channels, h, w = 2, 16, 6, 7
    strength = torch.linspace(-3, 3, batch * h * w).reshape(batch, h, w)
    direction = torch.zeros(channels)
    direction[5] = 1.0
    noise = 0.05 * torch.randn(batch, channels, h, w, generator=generator)
    features = strength[:, None] * direction[None, :, None, None] + noise
    rgb = pca_rgb(features)
    assert rgb.shape == (batch, 3, h, w) and rgb.dtype == torch.float32
    for channel in range(3):  # each component spans exactly [0, 1] over the batch
        assert rgb[:, channel].min() == 0 and rgb[:, channel].max() == 1
    red = rgb[:, 0].flatten()
    assert torch.corrcoef(torch.stack([red, strength.flatten()]))[0, 1] > 0.999  # positive by the sign rule
    assert torch.equal(pca_rgb(features), rgb)


def test_pca_rgb_upsamples_and_handles_few_channels():
    features = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    rgb = pca_rgb(features, size=16)
    assert rgb.shape == (3, 3, 16, 16)
    assert torch.all(rgb[:, 2] == 0)  # only 2 components exist
    assert torch.equal(rgb[:, :, ::4, ::4], pca_rgb(features))  # nearest-neighbour blocks
    with pytest.raises(SVGError, match=r"\[B, C, h, w\]"):
        pca_rgb(torch.zeros(4, 4, 4))
