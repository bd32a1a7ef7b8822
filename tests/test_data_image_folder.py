"""Image folders built from real files written with PIL: modes, crop geometry, bad files, layouts."""

import io
import warnings

import numpy as np
import pytest
import torch
from PIL import Image, features
from torch.utils.data import DataLoader

from svg_diffusion.data import ImageFolder, center_crop_resize
from svg_diffusion.errors import SVGError


def pixel(path, size=8):
    """The top-left pixel of a file after loading through a flat ImageFolder, as uint8 RGB."""
    image = ImageFolder(path.parent, size, labelled=False, progress=False)[0][0]
    return ((image[:, 0, 0] + 1) * 127.5).round().to(torch.uint8).tolist()


def save(image, path, **options):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **options)
    return path


# --- every PIL mode becomes correct 8-bit RGB -------------------------------------------------------------


def test_grayscale_and_bilevel_images(tmp_path):
    assert pixel(save(Image.new("L", (8, 8), 200), tmp_path / "l" / "a.png")) == [200, 200, 200]
    assert pixel(save(Image.new("1", (8, 8), 1), tmp_path / "one" / "a.png")) == [255, 255, 255]
    assert pixel(save(Image.new("1", (8, 8), 0), tmp_path / "bmp" / "a.bmp")) == [0, 0, 0]


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    for value, expected in ((65535, 255), (32896, 128), (257, 1), (0, 0)):
        path = save(Image.fromarray(np.full((8, 8), value, dtype=np.uint16)), tmp_path / f"v{value}" / "a.png")
        assert Image.open(path).mode == "I;16"
        assert pixel(path) == [expected] * 3
    wide = Image.fromarray(np.full((8, 8), 65535, dtype=np.int32))  # mode "I", e.g. from TIFF readers
    assert wide.mode == "I"
    assert pixel(save(wide, tmp_path / "i" / "a.tif")) == [255, 255, 255]


def test_transparency_is_composited_on_white(tmp_path):
    assert pixel(save(Image.new("RGBA", (8, 8), (255, 0, 0, 0)), tmp_path / "clear" / "a.png")) == [255, 255, 255]
    assert pixel(save(Image.new("RGBA", (8, 8), (255, 0, 0, 255)), tmp_path / "opaque" / "a.png")) == [255, 0, 0]
    assert pixel(save(Image.new("RGBA", (8, 8), (0, 0, 0, 128)), tmp_path / "half" / "a.png")) == [127, 127, 127]
    assert pixel(save(Image.new("LA", (8, 8), (0, 0)), tmp_path / "la" / "a.png")) == [255, 255, 255]


@pytest.mark.parametrize("suffix", [".png", ".gif"])
def test_palette_with_a_transparent_index(tmp_path, suffix):
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.putpixel((0, 0), 1)
    palette.info["transparency"] = 0  # red is the transparent index
    path = save(palette, tmp_path / "p" / f"a{suffix}", transparency=0)
    folder = ImageFolder(path.parent, 8, labelled=False, progress=False)
    pixels = ((folder[0][0] + 1) * 127.5).round().to(torch.uint8)
    assert pixels[:, 0, 0].tolist() == [0, 255, 0]  # the opaque green pixel
    assert pixels[:, 4, 4].tolist() == [255, 255, 255]  # transparent red became white


def test_palette_without_transparency(tmp_path):
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    assert pixel(save(palette, tmp_path / "p" / "a.png")) == [0, 0, 255]


def test_cmyk_jpeg(tmp_path):
    path = save(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), tmp_path / "cmyk" / "a.jpg", quality=100)
    assert Image.open(path).mode == "CMYK"
    red, green, blue = pixel(path)
    assert red > 240 and green < 15 and blue < 15


@pytest.mark.skipif(not features.check("webp"), reason="this PIL has no WebP support")
def test_webp(tmp_path):
    assert pixel(save(Image.new("RGB", (8, 8), (10, 20, 30)), tmp_path / "w" / "a.webp", lossless=True)) == [10, 20, 30]


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (16, 8), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 8, 8))  # stored landscape: left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": red on top, blue below
    path = save(image, tmp_path / "exif" / "a.png", exif=exif)
    pixels = ((ImageFolder(path.parent, 8, labelled=False, progress=False)[0][0] + 1) * 127.5).round()
    assert pixels[:, 0, 7].tolist() == [255, 0, 0]  # top right (stored orientation would give blue)
    assert pixels[:, 7, 0].tolist() == [0, 0, 255]  # bottom left (stored orientation would give red)


# --- the ADM/DiT center crop ------------------------------------------------------------------------------


def test_center_crop_keeps_the_middle_of_a_wide_image():
    stripes = np.zeros((40, 80, 3), dtype=np.uint8)
    stripes[:, :20] = (255, 0, 0)
    stripes[:, 20:60] = (0, 255, 0)
    stripes[:, 60:] = (0, 0, 255)
    cropped = center_crop_resize(Image.fromarray(stripes), 20)  # halved to 40x20, then the middle 20 columns
    assert cropped.shape == (20, 20, 3)
    assert np.all(cropped == (0, 255, 0))


def test_center_crop_of_a_tall_image_and_odd_leftovers():
    columns = np.tile((np.arange(41, dtype=np.uint8) * 5)[None, :, None], (20, 1, 3))
    cropped = center_crop_resize(Image.fromarray(columns), 20)  # no resize: 41 - 20 = 21, 10 px go left
    assert np.array_equal(cropped[0, :, 0], np.arange(10, 30) * 5)
    rows = np.ascontiguousarray(columns.transpose(1, 0, 2))
    assert np.array_equal(center_crop_resize(Image.fromarray(rows), 20)[:, 0, 0], np.arange(10, 30) * 5)


def test_center_crop_halves_with_a_box_filter_while_it_can():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(256, 256, 3), dtype=np.uint8)
    cropped = center_crop_resize(Image.fromarray(image), 64).astype(np.float64)  # 256 -> 128 -> 64, no bicubic
    expected = image.astype(np.float64).reshape(64, 4, 64, 4, 3).mean(axis=(1, 3))
    assert np.abs(cropped - expected).max() <= 2.0  # PIL's BOX rounds each halving up by up to 1
    direct_bicubic = np.asarray(Image.fromarray(image).resize((64, 64), Image.Resampling.BICUBIC), dtype=np.float64)
    assert np.abs(direct_bicubic - expected).max() > 10  # what skipping the halvings would give


def test_center_crop_upsamples_small_images():
    small = Image.fromarray(np.full((10, 20, 3), 77, dtype=np.uint8))
    cropped = center_crop_resize(small, 32)
    assert cropped.shape == (32, 32, 3) and np.all(cropped == 77)


# --- folder layouts and errors ----------------------------------------------------------------------------


def make_classes(root, counts):
    for name, count in counts.items():
        for index in range(count):
            save(Image.new("RGB", (12, 10), (index, 0, 0)), root / name / f"{index:03d}.png")


def test_class_subfolders_become_sorted_labels(tmp_path):
    make_classes(tmp_path, {"dog": 2, "cat": 3, "bird": 1})
    save(Image.new("RGB", (12, 10)), tmp_path / "cat" / "nested" / "deep.jpg")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    (tmp_path / ".cache").mkdir()
    with pytest.warns(UserWarning, match="outside class folders"):
        save(Image.new("RGB", (12, 10)), tmp_path / "loose.png")
        dataset = ImageFolder(tmp_path, 8, progress=False)
    assert dataset.classes == ["bird", "cat", "dog"]
    assert dataset.labels.tolist() == [0, 1, 1, 1, 1, 2, 2]
    assert dataset.skipped == []
    image, label = dataset[6]
    assert image.shape == (3, 8, 8) and label == 2 and -1 <= image.min() and image.max() <= 1


def test_flat_folder_is_unlabelled_and_limit_keeps_the_first_files(tmp_path):
    make_classes(tmp_path, {"a": 3, "b": 3})
    dataset = ImageFolder(tmp_path, 8, labelled=False, limit=4, progress=False)
    assert len(dataset) == 4 and dataset.classes == [] and dataset.labels.tolist() == [-1] * 4
    names = [path.relative_to(tmp_path).as_posix() for path, _ in dataset.samples]
    assert names == ["a/000.png", "a/001.png", "a/002.png", "b/000.png"]
    assert dataset[3][1] == -1


def test_missing_empty_and_classless_folders_are_clear_errors(tmp_path):
    with pytest.raises(SVGError, match="does not exist"):
        ImageFolder(tmp_path / "nope", 8)
    save(Image.new("RGB", (4, 4)), tmp_path / "file.png")
    with pytest.raises(SVGError, match="is not a folder"):
        ImageFolder(tmp_path / "file.png", 8)
    with pytest.raises(SVGError, match="no class subfolders"):
        ImageFolder(tmp_path, 8)
    (tmp_path / "empty" / "class_a").mkdir(parents=True)
    (tmp_path / "empty" / "class_a" / "readme.txt").write_text("hi")
    with pytest.raises(SVGError, match="holds no image files"):
        ImageFolder(tmp_path / "empty", 8)
    with pytest.raises(SVGError, match="holds no image files"):
        ImageFolder(tmp_path / "empty" / "class_a", 8, labelled=False)


def write_bad_files(folder):
    """A zero-byte file, random bytes named .png, and a JPEG cut in half (its header is intact)."""
    rng = np.random.default_rng(0)
    (folder / "b_empty.png").write_bytes(b"")
    (folder / "c_noise.png").write_bytes(rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format="JPEG", quality=95)
    (folder / "d_truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def test_unreadable_files_are_skipped_with_a_warning_and_an_epoch_survives(tmp_path):
    save(Image.new("RGB", (8, 8), (10, 10, 10)), tmp_path / "a_good.png")
    save(Image.new("RGB", (8, 8), (250, 250, 250)), tmp_path / "e_good.png")
    write_bad_files(tmp_path)

    with pytest.warns(UserWarning, match="skipped 2 unreadable file"):
        dataset = ImageFolder(tmp_path, 8, labelled=False, progress=False)
    assert sorted(path.name for path, _ in dataset.skipped) == ["b_empty.png", "c_noise.png"]
    assert dict((path.name, reason) for path, reason in dataset.skipped)["b_empty.png"] == "zero-byte file"
    assert len(dataset) == 3  # the truncated JPEG passes the cheap scan

    with pytest.warns(UserWarning, match="d_truncated.jpg cannot be decoded"):
        batches = list(DataLoader(dataset, batch_size=2))
    assert sum(len(labels) for _, labels in batches) == 3
    assert len(dataset.skipped) == 3 and dataset.failed_indices == {1}
    assert torch.equal(dataset[1][0], dataset[2][0])  # the truncated file is replaced by the next image

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a known failure is not decoded (nor reported) again
        dataset[1]


@pytest.mark.parametrize(
    "check, skipped", [("size", ["b_empty.png"]), ("decode", ["b_empty.png", "c_noise.png", "d_truncated.jpg"])]
)
def test_the_scan_looks_as_hard_as_check_says(tmp_path, check, skipped):
    save(Image.new("RGB", (8, 8)), tmp_path / "a_good.png")
    write_bad_files(tmp_path)
    with pytest.warns(UserWarning, match=f"skipped {len(skipped)} unreadable file"):
        dataset = ImageFolder(tmp_path, 8, labelled=False, check=check, progress=False)
    assert sorted(path.name for path, _ in dataset.skipped) == skipped
    assert len(dataset) == 4 - len(skipped)
    with pytest.raises(SVGError, match="check must be one of"):
        ImageFolder(tmp_path, 8, labelled=False, check="full")


def test_a_folder_of_only_unreadable_files_is_an_error(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "b.jpg").write_bytes(b"garbage")
    with pytest.raises(SVGError, match="no image file can be read: 2 unreadable"):
        ImageFolder(tmp_path, 8, labelled=False, progress=False)


def test_worker_processes_load_the_same_images(tmp_path):
    make_classes(tmp_path, {"a": 3, "b": 2})
    dataset = ImageFolder(tmp_path, 8, progress=False)
    in_process = torch.cat([images for images, _ in DataLoader(dataset, batch_size=2)])
    in_workers = torch.cat([images for images, _ in DataLoader(dataset, batch_size=2, num_workers=1)])
    assert torch.equal(in_process, in_workers)
