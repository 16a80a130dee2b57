"""Tests of mammolens.io.images.read_raster (and read_image's raster dispatch)."""

import numpy as np
import pytest
from PIL import Image

from mammolens.io import ImageReadError, read_image
from mammolens.io.images import read_raster


def test_read_raster_mini_mias_png(mini_mias):
    path = sorted((mini_mias / "images").glob("*.png"))[0]
    img = read_image(path)
    expected = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255.0
    assert img.pixels.shape == (1024, 1024) and img.pixels.dtype == np.float32
    assert 0.0 <= img.pixels.min() and img.pixels.max() <= 1.0
    np.testing.assert_allclose(img.pixels, expected, atol=1e-6)
    assert img.conversion["reader"] == "mammolens.io.images"
    assert img.meta["laterality"] == "" and img.meta["view"] == "" and img.meta["bits_stored"] == 8


@pytest.fixture(scope="module")
def ramp16() -> np.ndarray:
    return np.linspace(0, 4095, 40 * 30).round().astype(np.uint16).reshape(40, 30)  # 12-bit data in 16 bits


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_read_raster_16bit_normalised_by_bit_depth(tmp_path, ramp16, suffix):
    path = tmp_path / f"x16{suffix}"
    Image.fromarray(ramp16).save(path)
    img = read_raster(path)
    # by bit depth (65535), not min/max: 12-bit content stays below 0.0625
    np.testing.assert_allclose(img.pixels, ramp16 / 65535.0, atol=1e-7)
    assert img.meta["bits_stored"] == 16 and img.pixels.max() < 0.07


def test_read_raster_8bit_pgm_and_jpeg(tmp_path):
    arr = np.tile(np.arange(0, 250, 5, dtype=np.uint8), (20, 1))
    Image.fromarray(arr).save(tmp_path / "a.pgm")
    Image.fromarray(arr).save(tmp_path / "a.jpg", quality=95)
    np.testing.assert_allclose(read_raster(tmp_path / "a.pgm").pixels, arr / 255.0, atol=1e-7)
    np.testing.assert_allclose(read_raster(tmp_path / "a.jpg").pixels, arr / 255.0, atol=0.03)


def test_read_raster_grey_rgb_reduced(tmp_path):
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "rgb.png")
    img = read_raster(tmp_path / "rgb.png")
    np.testing.assert_allclose(img.pixels, grey / 255.0, atol=1e-7)
    assert img.conversion["rgb_reduced"] is True


def test_read_raster_rejects_colour(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "red.png")
    with pytest.raises(ImageReadError, match="not a greyscale mammogram") as err:
        read_raster(tmp_path / "red.png")
    assert "red.png" in str(err.value)


def test_read_raster_garbage_names_file(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"not an image at all" * 20)
    with pytest.raises(ImageReadError, match="broken.png"):
        read_image(path)


def test_read_image_unknown_suffix(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello " * 50)
    with pytest.raises(ImageReadError, match="not a supported raster"):
        read_image(path)


# ------------------------------------------------------------ hostile files (issue 10): refused cleanly
def test_read_raster_decompression_bomb_refused(tmp_path, monkeypatch):
    path = tmp_path / "bomb.png"
    Image.new("L", (300, 200)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50_000)  # 60,000 pixels: Pillow only warns below 2x this
    with pytest.raises(ImageReadError, match=r"bomb\.png: refused as a decompression bomb"):
        read_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)  # over 2x: Pillow's own DecompressionBombError
    with pytest.raises(ImageReadError, match="refused as a decompression bomb"):
        read_raster(path)


def test_read_raster_pixel_budget_checked_before_load(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("L", (40, 30)).save(path)
    loads = []
    monkeypatch.setattr(Image.Image, "load", lambda self: loads.append(1))
    with pytest.raises(ImageReadError, match="30 x 40 = 1,200 pixels exceeds the pixel budget of 1,000"):
        read_image(path, max_pixels=1000)
    monkeypatch.setenv("MAMMOLENS_MAX_PIXELS", "1000")
    with pytest.raises(ImageReadError, match="budget of 1,000"):
        read_raster(path)
    assert loads == []


def test_read_raster_float_nan_refused(tmp_path):
    arr = np.linspace(0, 1, 20 * 10, dtype=np.float32).reshape(20, 10)
    arr[3, 4] = np.nan
    path = tmp_path / "nan.tif"
    Image.fromarray(arr, mode="F").save(path)
    with pytest.raises(ImageReadError, match="NaN/Inf"):
        read_image(path)


def test_read_raster_decoder_base_exception_becomes_image_read_error(tmp_path, monkeypatch):
    class FakePanic(BaseException):
        pass

    path = tmp_path / "x.png"
    Image.new("L", (4, 4)).save(path)

    def panic(self):
        raise FakePanic("decoder panicked")

    monkeypatch.setattr(Image.Image, "load", panic)
    with pytest.raises(ImageReadError, match=r"x\.png: .*FakePanic: decoder panicked"):
        read_image(path)


def test_read_raster_png_cut_before_iend_refused_even_when_rows_decode(tmp_path):
    flat = tmp_path / "flat.png"
    Image.new("L", (40, 48), 90).save(flat)  # compresses to a few bytes: a cut near the end still decodes
    data = flat.read_bytes()
    iend = data.rfind(b"IEND") - 4
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: iend - 2])  # inside the IDAT chunk's CRC
    with pytest.raises(ImageReadError, match="truncated PNG"):
        read_raster(cut)
    junk = tmp_path / "junk.png"
    junk.write_bytes(data + b"\x00" * 100)  # junk after IEND: still a whole image
    assert read_raster(junk).pixels.shape == (48, 40)
