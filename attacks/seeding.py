"""Random draws per image, from (seed, mention id), so an adversarial never depends on its batch.

torchattacks draws a random start for the whole batch from torch's global generator (PGD) or
after re-seeding it with a fixed seed (APGD), so row ``b``'s start depends on the rows before
it: regrouping the images (another ``--batch-size``, a resumed run, a Ray shard) changed every
image. Here each image has its own ``torch.Generator`` seeded with ``row_seed(seed, id)``, a
stable hash (not Python's salted ``hash``), and every draw for that image comes from it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch


def row_seed(seed: int, key: str) -> int:
    """A 63-bit seed for one image: sha256 of the run's seed and the mention id."""
    digest = hashlib.sha256(f"{int(seed)}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def row_seeds(seed: int, keys: Sequence[str]) -> list[int]:
    return [row_seed(seed, key) for key in keys]


def generator(seed: int, device: torch.device | str) -> torch.Generator:
    """A generator on ``device`` seeded for one image (CUDA draws need a CUDA generator)."""
    return torch.Generator(device=torch.device(device)).manual_seed(seed)
