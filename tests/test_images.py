"""Every kind of bad or unusual image either loads faithfully or fails with a reason tag."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kb.errors import ImageError
from kb.images import crop, load_rgb, to_tensor


def _save(path: Path, image: Image.Image, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


@pytest.fixture
def photo() -> Image.Image:
    """A real photograph (scikit-image's coffee cup) so decoding is exercised on real content."""
    from kb.loaders.demo import package_file

    return Image.open(package_file("skimage", "data/coffee.png")).convert("RGB")


def test_plain_rgb_round_trip(tmp_path: Path, photo: Image.Image) -> None:
    path = _save(tmp_path / "ok.png", photo)
    loaded = load_rgb(path)
    assert loaded.mode == "RGB" and loaded.size == photo.size
    assert np.array_equal(np.asarray(loaded), np.asarray(photo))


def test_grayscale_becomes_three_equal_channels(tmp_path: Path, photo: Image.Image) -> None:
    path = _save(tmp_path / "gray.png", photo.convert("L"))
    array = np.asarray(load_rgb(path))
    grey = np.asarray(photo.convert("L"))
    assert array.shape == (*grey.shape, 3)
    for channel in range(3):  # each of R, G and B is the grey value itself
        assert np.array_equal(array[..., channel], grey), channel


def test_cmyk_jpeg_is_converted(tmp_path: Path, photo: Image.Image) -> None:
    path = _save(tmp_path / "cmyk.jpg", photo.convert("CMYK"), quality=95)
    loaded = np.asarray(load_rgb(path)).astype(int)
    assert loaded.shape == (*photo.size[::-1], 3)
    assert np.abs(loaded - np.asarray(photo).astype(int)).mean() < 20


def test_palette_with_transparency_is_composited_on_white(tmp_path: Path) -> None:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([255, 0, 0] + [0, 0, 255] + [0] * 762)
    image.paste(1, (0, 0, 4, 8))
    path = _save(tmp_path / "palette.png", image, transparency=0)
    array = np.asarray(load_rgb(path))
    assert tuple(array[0, 0]) == (0, 0, 255)
    assert tuple(array[0, 7]) == (255, 255, 255)  # transparent red -> white


def test_rgba_alpha_is_composited(tmp_path: Path) -> None:
    image = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    path = _save(tmp_path / "alpha.png", image)
    assert tuple(np.asarray(load_rgb(path))[0, 0]) == (255, 255, 255)


def test_sixteen_bit_is_rescaled(tmp_path: Path) -> None:
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).astype(np.uint16)
    path = _save(tmp_path / "deep.png", Image.fromarray(ramp))
    array = np.asarray(load_rgb(path))
    assert array.min() == 0 and array.max() == 255


def test_exif_rotation_is_applied(tmp_path: Path) -> None:
    """Orientation 6 (the camera was turned: rotate 90 degrees clockwise to display). The stored
    image is asymmetric, red in its top-left corner only, so the check sees where that corner
    went (top-right when displayed), not just that width and height swapped."""
    image = Image.new("RGB", (40, 20), (10, 10, 200))
    image.paste((220, 20, 20), (0, 0, 12, 8))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(tmp_path / "rotated.jpg", image, exif=exif.tobytes(), quality=95)
    loaded = load_rgb(path)
    assert loaded.size == (20, 40)
    array = np.asarray(loaded).astype(int)
    red, blue = np.array([220, 20, 20]), np.array([10, 10, 200])
    assert np.abs(array[2, -3] - red).max() < 40, array[2, -3]  # the red corner, now top-right
    for corner in (array[2, 2], array[-3, 2], array[-3, -3]):
        assert np.abs(corner - blue).max() < 40, corner
    expected = np.asarray(image.transpose(Image.Transpose.ROTATE_270)).astype(int)  # 90° clockwise
    assert np.abs(array - expected).mean() < 5


def test_wrong_extension_still_decodes(tmp_path: Path, photo: Image.Image) -> None:
    path = _save(tmp_path / "actually_png.jpg", photo, format="PNG")
    assert load_rgb(path).size == photo.size


@pytest.mark.parametrize(
    ("name", "payload", "reason"),
    [
        ("empty.jpg", b"", "empty"),
        ("text.jpg", b"this is not an image at all", "not_an_image"),
    ],
)
def test_unreadable_bytes(tmp_path: Path, name: str, payload: bytes, reason: str) -> None:
    path = tmp_path / name
    path.write_bytes(payload)
    with pytest.raises(ImageError) as error:
        load_rgb(path)
    assert error.value.reason == reason and name in str(error.value)


def test_truncated_jpeg_is_reported(tmp_path: Path, photo: Image.Image) -> None:
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG", quality=90)
    path = tmp_path / "truncated.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageError) as error:
        load_rgb(path)
    assert error.value.reason in ("truncated", "corrupt")


def test_corrupt_png_is_reported(tmp_path: Path, photo: Image.Image) -> None:
    buffer = io.BytesIO()
    photo.save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[200:400] = bytes(200)  # zero a stretch of compressed data (CRC and zlib both break)
    path = tmp_path / "corrupt.png"
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError) as error:
        load_rgb(path)
    assert error.value.reason in ("corrupt", "truncated")


def test_decompression_bomb_is_refused_without_decoding(tmp_path: Path) -> None:
    path = _save(tmp_path / "bomb.png", Image.new("1", (12_000, 12_000)))
    assert path.stat().st_size < 1_000_000
    with pytest.raises(ImageError) as error:
        load_rgb(path)
    assert error.value.reason == "too_large"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as error:
        load_rgb(tmp_path / "nowhere.jpg")
    assert error.value.reason == "missing"


def test_crop_clips_and_rejects_empty_boxes(photo: Image.Image) -> None:
    assert crop(photo, (-5.0, -5.0, 10.2, 20.7), "p").size == (11, 21)
    with pytest.raises(ImageError) as error:
        crop(photo, (5000.0, 5000.0, 6000.0, 6000.0), "p")
    assert error.value.reason == "bad_bbox"


def test_to_tensor_contract(photo: Image.Image) -> None:
    tensor = to_tensor(photo)
    assert tensor.shape == (3, photo.height, photo.width)
    assert tensor.dtype.is_floating_point and 0.0 <= float(tensor.min()) <= float(tensor.max()) <= 1.0
