"""Output of an attack run: rounded 8-bit PNGs, exact float tensors, the folder's identity.

Layout (mirrors the public MEL-Robustness release ``ADV-MEL/{PGD,APGD,CW}-{normal,strong}/{dataset}/``)::

    <out>/<PRESET folder>/<dataset>/attack.json      what was attacked with what (refuses a mismatch)
    <out>/<PRESET folder>/<dataset>/manifest.jsonl   one line per image, appended + flushed
    <out>/<PRESET folder>/<dataset>/<id>.png         lossless 8-bit RGB, round(x * 255)
    <out>/<PRESET folder>/<dataset>/<id>.pt          the exact float (3, H, W) adversarial

The manifest is a ``kb.runcore.item_log.ItemLog`` (a line cut by a kill is dropped and redone).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from kb.runcore.files import claim_folder

IDENTITY_FILE = "attack.json"


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8 by rounding to nearest (not truncation)."""
    return image.detach().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def write_png(image: torch.Tensor, path: Path) -> None:
    """Lossless 8-bit RGB PNG of a (3, H, W) float image, written atomically."""
    temporary = path.with_name(path.name + ".tmp")
    Image.fromarray(to_uint8(image), "RGB").save(temporary, format="PNG")
    os.replace(temporary, path)


def write_tensor(image: torch.Tensor, path: Path) -> None:
    temporary = path.with_name(path.name + ".tmp")
    torch.save(image.detach().cpu().contiguous(), temporary)
    os.replace(temporary, path)


def file_stem(item_id: str) -> str:
    """A file name for a mention id (path separators and odd characters replaced)."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", item_id) or "_"


def claim_attack_folder(folder: Path, identity: dict[str, Any]) -> None:
    """Create ``folder`` with ``attack.json``, or refuse when it holds another attack/scorer."""
    claim_folder(folder, identity, IDENTITY_FILE, holds="adversarial images of another attack configuration")
