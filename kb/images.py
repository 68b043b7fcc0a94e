"""Read any image a dataset points at into RGB, or say exactly why it cannot be used.

MEL datasets are scraped from the web: zero-byte and truncated downloads, CMYK JPEGs,
palette PNGs with transparency, 16-bit greyscale scans, phone photos stored sideways with an
EXIF orientation tag, and the odd 20,000 x 20,000 map. Every reader in the toolkit goes
through ``load_rgb`` so these cases are handled once: the usable ones are converted
faithfully, the rest raise ``ImageError`` with a reason tag that runs record per item.
"""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from kb.errors import ImageError

MAX_PIXELS = 89_478_485
"""Pillow's own decompression-bomb limit (about 9,459 x 9,459); larger images are refused."""


def load_rgb(
    path: Path | str,
    bbox: tuple[float, float, float, float] | None = None,
    max_pixels: int = MAX_PIXELS,
) -> Image.Image:
    """Decode ``path`` fully into an upright RGB image, optionally cropped to ``bbox``.

    Alpha is composited onto white (the background a web page shows), 16-bit and float
    greyscale are rescaled to 8 bits, and EXIF orientation is applied. Raises ``ImageError``
    with reason ``missing``, ``empty``, ``not_an_image``, ``too_large``, ``truncated``,
    ``corrupt`` or ``bad_bbox``.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(path, "missing", "no such file")
    if path.stat().st_size == 0:
        raise ImageError(path, "empty", "zero-byte file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                width, height = opened.size
                if width * height > max_pixels:
                    raise ImageError(path, "too_large", f"{width}x{height} exceeds {max_pixels} pixels")
                opened.load()
                image = _to_rgb(ImageOps.exif_transpose(opened))
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(path, "too_large", str(exc)) from exc
    except UnidentifiedImageError as exc:
        raise ImageError(path, "not_an_image", "Pillow cannot identify the format") from exc
    except OSError as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise ImageError(path, reason, str(exc)) from exc
    except (ValueError, SyntaxError, struct.error) as exc:
        raise ImageError(path, "corrupt", str(exc)) from exc
    return crop(image, bbox, path) if bbox is not None else image


def crop(image: Image.Image, bbox: tuple[float, float, float, float], path: Path | str) -> Image.Image:
    """Crop to an (x1, y1, x2, y2) box clipped to the image; an empty box is an error."""
    x1, y1, x2, y2 = bbox
    left, top = max(0, int(np.floor(x1))), max(0, int(np.floor(y1)))
    right, bottom = min(image.width, int(np.ceil(x2))), min(image.height, int(np.ceil(y2)))
    if right <= left or bottom <= top:
        raise ImageError(path, "bad_bbox", f"box {bbox} is empty inside {image.size}")
    return image.crop((left, top, right, bottom))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float tensor (3, H, W) in [0, 1], the toolkit's image contract."""
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        return Image.fromarray(scaled.round().astype(np.uint8), "L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def load_pixels(path: Path | str, bbox: tuple[float, float, float, float] | None = None) -> torch.Tensor:
    """(3, H, W) float in [0, 1] of a picture file or an exact ``.pt`` tensor; ``ImageError`` otherwise.

    The one pixel reader for stored images: a picture goes through ``load_rgb`` (cropped to
    ``bbox``); a ``.pt`` (an attack's exact float adversarial, already cropped) must hold a finite
    (3, H, W) tensor inside [0, 1]. Out-of-range pixels are refused rather than clamped: they mean
    the file was not written by this toolkit's attacks, and clamping would hide that.
    """
    path = Path(path)
    if path.suffix != ".pt":
        return to_tensor(load_rgb(path, bbox))
    if not path.is_file():
        raise ImageError(path, "missing", "no such file")
    try:
        image = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - zip/pickle errors vary; recorded per item
        raise ImageError(path, "corrupt", f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ImageError(path, "not_an_image", f"expected a (3, H, W) tensor, got {shape}")
    image = image.float()
    if not bool(torch.isfinite(image).all()) or float(image.min()) < 0 or float(image.max()) > 1:
        raise ImageError(path, "corrupt", "pixels not finite or outside [0, 1]")
    return image
