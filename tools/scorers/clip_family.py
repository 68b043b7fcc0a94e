"""Dual-encoder (CLIP-family) scorers: one wrapper, small per-architecture adapters.

``DualEncoderScorer`` implements the scorer contract (``tools/scorers/base.py``) for any model
with an image tower and a text tower in a shared embedding space. What differs between
architectures is only how to get the two embeddings, the logit scale, the tokenizer settings
and the image preprocessing defaults; each ``DualEncoderAdapter`` below says exactly that.

=============  ====================================  ==============================================
name prefix    model class                           logit scale (cosine x scale)
=============  ====================================  ==============================================
``clip``       ``CLIPModel``                         ``exp(logit_scale)``
``siglip``     ``SiglipModel``                       ``exp(logit_scale)``; the model's sigmoid
                                                     logits add ``logit_bias``, a constant shift of
                                                     every candidate that changes neither ranking,
                                                     softmax / cross-entropy nor the CW margin, so
                                                     it is left out (``scorer.logit_bias`` has it)
``align``      ``AlignModel``                        ``1 / temperature``
``blip``       ``BlipForImageTextRetrieval`` (ITC)   the HF checkpoint drops BLIP's learned ITC
                                                     temperature, so ``exp(logit_scale_init_value)``
                                                     of its config (1/0.07) unless given
``flava``      ``FlavaModel`` (CLS projections)      ``exp(logit_scale)``
``owlvit``     ``OwlViTModel`` (image-level)         ``exp(logit_scale)``
``chineseclip`` ``ChineseCLIPModel``                 ``exp(logit_scale)``
``openclip``   ``open_clip.create_model``            ``exp(logit_scale)`` (a SigLIP ``logit_bias``
                                                     is left out as above)
=============  ====================================  ==============================================

Names: ``<prefix>:<hub id or local dir>``; for open_clip ``openclip:<arch>/<pretrained tag or
weights file>``, ``openclip:<local dir with open_clip_config.json>`` or ``openclip:hf-hub:<repo>``.
Loading goes through ``tools.hub`` (open_clip names through ``tools.registry.create_openclip``,
the resolver the model registry uses too, which applies a pretrained tag's QuickGELU), so a hub
id that is not available offline raises ``ModelUnavailable`` at once. Image size, crop,
interpolation, mean and std come from the saved image-processor config (open_clip: the model's
preprocess config) when there is one, else from the architecture's defaults below.

Text embeddings (candidates and contexts) go through ``TextEmbeddingCache`` keyed by a
fingerprint of the weights and tokenizer settings; they carry no gradient. The image embedding
is differentiable down to the pixels.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tools.hub import ModelUnavailable, load_pretrained, unavailable
from tools.scorers.base import (
    CLIP_MEAN,
    CLIP_STD,
    HALF,
    PixelPreprocess,
    ResizeMode,
    Scorer,
    Task,
    cosine_logits,
    fuse_it2t,
)
from tools.scorers.text_cache import TextEmbeddingCache, model_fingerprint

MEMO_BATCHES = 4
"""Text batches a scorer keeps as ready tensors (candidates and contexts of the current batch)."""

FINGERPRINT_PROBE = "a photo of Barack Obama, 1961 (Honolulu)."
"""Tokenised into the fingerprint, so a different tokenizer means a different cache."""


# --------------------------------------------------------------------------------------------
# Adapters
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DualEncoderAdapter:
    """How one transformers architecture exposes its embeddings (defaults: ``CLIPModel``)."""

    family: str
    model_class: str
    image_processor_type: str
    text_inputs: tuple[str, ...] = ("input_ids", "attention_mask")
    padding: bool | str = True
    max_length: int | None = None  # None: the text config's max_position_embeddings
    resize_mode: ResizeMode = "squash"
    crop: bool = False
    resize_ratio: float = 1.0  # resize to ratio x image_size, then crop to image_size
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    interpolation: str = "bicubic"
    int_size_is_shortest_edge: bool = False
    vision_config: str = "vision_config"
    processor_extras: tuple[tuple[str, Any], ...] = field(default=())

    # -- embeddings -----------------------------------------------------------------------------

    def image_features(self, model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        return model.get_image_features(pixel_values=pixels)

    def text_features(self, model: torch.nn.Module, tokens: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return model.get_text_features(**tokens)

    def logit_scale(self, model: torch.nn.Module) -> torch.Tensor:
        return model.logit_scale.exp()

    def logit_bias(self, model: torch.nn.Module) -> torch.Tensor | None:
        return None

    # -- text -----------------------------------------------------------------------------------

    def text_max_length(self, model: torch.nn.Module) -> int:
        limit = int(model.config.text_config.max_position_embeddings)
        return min(self.max_length, limit) if self.max_length else limit

    def tokenize(
        self, tokenizer: Any, model: torch.nn.Module, texts: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        batch = tokenizer(
            list(texts),
            padding=self.padding,
            truncation=True,
            max_length=self.text_max_length(model),
            return_tensors="pt",
        )
        return {key: batch[key] for key in self.text_inputs if key in batch}

    def tokenizer_settings(self, model: torch.nn.Module) -> tuple[Any, ...]:
        return (self.padding, self.text_max_length(model), self.text_inputs)

    # -- images ---------------------------------------------------------------------------------

    def default_preprocess(self, model: torch.nn.Module) -> PixelPreprocess:
        size = int(getattr(model.config, self.vision_config).image_size)
        resized = round(size * self.resize_ratio)
        return PixelPreprocess(
            size if self.resize_mode != "squash" else (resized, resized),
            resize_mode=self.resize_mode,
            crop_size=size if self.crop else None,
            mean=self.mean,
            std=self.std,
            interpolation=self.interpolation,
        )

    # -- files ----------------------------------------------------------------------------------

    def load(self, spec: str) -> tuple[torch.nn.Module, Any, PixelPreprocess]:
        """(model, tokenizer, preprocess) from a hub id or a local directory."""
        import transformers
        from transformers import AutoTokenizer
        from transformers.image_processing_base import ImageProcessingMixin

        model_class = getattr(transformers, self.model_class)
        model = load_pretrained(model_class.from_pretrained, spec)
        tokenizer = load_pretrained(AutoTokenizer.from_pretrained, spec)
        default = self.default_preprocess(model)
        try:
            config, _ = load_pretrained(ImageProcessingMixin.get_image_processor_dict, spec)
        except (ModelUnavailable, OSError):
            return model, tokenizer, default  # no saved image-processor config: architecture defaults
        preprocess = PixelPreprocess.from_processor_config(
            config, default, int_size_is_shortest_edge=self.int_size_is_shortest_edge
        )
        return model, tokenizer, preprocess

    def save(
        self, model: torch.nn.Module, tokenizer: Any, preprocess: PixelPreprocess, directory: Path
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        config = preprocess.to_processor_config(self.image_processor_type) | dict(self.processor_extras)
        (directory / "preprocessor_config.json").write_text(json.dumps(config, indent=2) + "\n")


@dataclass(frozen=True)
class SiglipAdapter(DualEncoderAdapter):
    """SigLIP was trained on max-length padded text without an attention mask."""

    def logit_bias(self, model: torch.nn.Module) -> torch.Tensor | None:
        return model.logit_bias


@dataclass(frozen=True)
class AlignAdapter(DualEncoderAdapter):
    """ALIGN divides by a learned temperature; its image embedding is the pooled EfficientNet feature."""

    def logit_scale(self, model: torch.nn.Module) -> torch.Tensor:
        return 1.0 / model.temperature


@dataclass(frozen=True)
class BlipAdapter(DualEncoderAdapter):
    """BLIP's ITC head: CLS tokens of the unimodal encoders through ``vision_proj`` / ``text_proj``.

    This is ``BlipForImageTextRetrieval.forward(use_itm_head=False)`` split into its two towers.
    """

    def image_features(self, model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        hidden = model.vision_model(pixel_values=pixels).last_hidden_state
        return model.vision_proj(hidden[:, 0])

    def text_features(self, model: torch.nn.Module, tokens: Mapping[str, torch.Tensor]) -> torch.Tensor:
        hidden = model.text_encoder(**tokens).last_hidden_state
        return model.text_proj(hidden[:, 0])

    def logit_scale(self, model: torch.nn.Module) -> torch.Tensor:
        return torch.tensor(float(model.config.logit_scale_init_value)).exp()


@dataclass(frozen=True)
class FlavaAdapter(DualEncoderAdapter):
    """FLAVA's ``get_*_features`` project every token; the contrastive embedding is the CLS one."""

    def image_features(self, model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        return model.get_image_features(pixel_values=pixels)[:, 0]

    def text_features(self, model: torch.nn.Module, tokens: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return model.get_text_features(**tokens)[:, 0]


@dataclass(frozen=True)
class ChineseClipAdapter(DualEncoderAdapter):
    """``ChineseCLIPModel.forward`` projects the text CLS state; transformers 4.57's
    ``get_text_features`` reads a pooler the model does not build (transformers PR #42351)."""

    def text_features(self, model: torch.nn.Module, tokens: Mapping[str, torch.Tensor]) -> torch.Tensor:
        hidden = model.text_model(**tokens).last_hidden_state
        return model.text_projection(hidden[:, 0])


@dataclass(frozen=True)
class OpenClipAdapter(DualEncoderAdapter):
    """open_clip models: ``encode_image`` / ``encode_text``, tokenizer from ``open_clip.get_tokenizer``."""

    def image_features(self, model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        return model.encode_image(pixels)

    def text_features(self, model: torch.nn.Module, tokens: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return model.encode_text(tokens["text"])

    def logit_bias(self, model: torch.nn.Module) -> torch.Tensor | None:
        return getattr(model, "logit_bias", None)

    def tokenize(
        self, tokenizer: Any, model: torch.nn.Module, texts: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        return {"text": tokenizer(list(texts))}

    def tokenizer_settings(self, model: torch.nn.Module) -> tuple[Any, ...]:
        return (type(model).__name__, getattr(model, "context_length", None))

    def default_preprocess(self, model: torch.nn.Module) -> PixelPreprocess:
        import open_clip

        cfg = open_clip.get_model_preprocess_cfg(model)
        size = cfg.get("size", 224)
        if isinstance(size, Sequence) and size[0] == size[1]:
            size = int(size[0])
        mode = cfg.get("resize_mode", "shortest")
        if mode == "squash" or not isinstance(size, int):
            return PixelPreprocess(
                size,
                resize_mode="squash",
                mean=cfg.get("mean", CLIP_MEAN),
                std=cfg.get("std", CLIP_STD),
                interpolation=cfg.get("interpolation", "bicubic"),
            )
        return PixelPreprocess(
            size,
            resize_mode=mode,
            crop_size=size if mode == "shortest" else None,
            mean=cfg.get("mean", CLIP_MEAN),
            std=cfg.get("std", CLIP_STD),
            interpolation=cfg.get("interpolation", "bicubic"),
        )

    def load(self, spec: str) -> tuple[torch.nn.Module, Any, PixelPreprocess]:
        """Through ``tools.registry.create_openclip``, the one open_clip resolver (a tag brings its
        QuickGELU and, offline, its cached weights file or an immediate ``ModelUnavailable``)."""
        import open_clip

        from tools.registry import create_openclip

        model, source = create_openclip(spec)
        try:
            tokenizer = open_clip.get_tokenizer(source.model_name)
        except (OSError, RuntimeError) as exc:
            raise unavailable(source.label, f"open_clip could not load its tokenizer ({exc})") from exc
        return model, tokenizer, self.default_preprocess(model)

    def save(
        self, model: torch.nn.Module, tokenizer: Any, preprocess: PixelPreprocess, directory: Path
    ) -> None:
        raise NotImplementedError(
            "open_clip scorers load from a directory holding open_clip_config.json and the weights; "
            "copy that directory instead"
        )


ADAPTERS: dict[str, DualEncoderAdapter] = {
    adapter.family: adapter
    for adapter in (
        DualEncoderAdapter(
            "clip",
            "CLIPModel",
            "CLIPImageProcessor",
            resize_mode="shortest",
            crop=True,
            int_size_is_shortest_edge=True,
        ),
        SiglipAdapter(
            "siglip",
            "SiglipModel",
            "SiglipImageProcessor",
            text_inputs=("input_ids",),
            padding="max_length",
            mean=HALF,
            std=HALF,
        ),
        AlignAdapter(
            "align",
            "AlignModel",
            "EfficientNetImageProcessor",
            text_inputs=("input_ids", "attention_mask", "token_type_ids"),
            max_length=64,
            crop=True,
            resize_ratio=346 / 289,
            mean=HALF,
            std=HALF,
            interpolation="bilinear",
            processor_extras=(("include_top", False), ("rescale_offset", False)),
        ),
        BlipAdapter("blip", "BlipForImageTextRetrieval", "BlipImageProcessor"),
        FlavaAdapter(
            "flava",
            "FlavaModel",
            "FlavaImageProcessor",
            text_inputs=("input_ids", "attention_mask", "token_type_ids"),
            vision_config="image_config",
        ),
        DualEncoderAdapter(
            "owlvit", "OwlViTModel", "OwlViTImageProcessor", padding="max_length", max_length=16
        ),
        ChineseClipAdapter(
            "chineseclip",
            "ChineseCLIPModel",
            "ChineseCLIPImageProcessor",
            text_inputs=("input_ids", "attention_mask", "token_type_ids"),
            resize_mode="shortest",
            crop=True,
            int_size_is_shortest_edge=True,
        ),
        OpenClipAdapter("openclip", "open_clip", ""),
    )
}
"""Name prefix -> adapter. Preprocessing fields are defaults for when no processor config is saved."""


# --------------------------------------------------------------------------------------------
# The scorer
# --------------------------------------------------------------------------------------------


class DualEncoderScorer(Scorer):
    """A dual encoder under the scorer contract; see the module docstring for the families.

    Build it from a name (``DualEncoderScorer.from_pretrained("clip:openai/clip-vit-base-patch32")``,
    or ``tools.scorers.load_scorer``) or from a model object and its tokenizer (tests pass tiny
    random models of the real classes). The model is frozen and kept in eval mode: a scorer is a
    fixed function of its inputs, which is also what makes its text embeddings cacheable.

    ``fusion_normalize``: whether IT2T adds unit vectors (default) or raw embeddings; see
    ``base.fuse_it2t``. ``logit_scale`` overrides the architecture's scale (BLIP).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        adapter: DualEncoderAdapter | str,
        *,
        name: str | None = None,
        task: Task = "i2t",
        preprocess: PixelPreprocess | None = None,
        text_cache: TextEmbeddingCache | None = None,
        fusion_normalize: bool = True,
        logit_scale: float | None = None,
        text_batch_size: int = 256,
    ) -> None:
        adapter = ADAPTERS[adapter] if isinstance(adapter, str) else adapter
        super().__init__(name or f"{adapter.family}:{type(model).__name__}", adapter.family, task)
        self.adapter = adapter
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.preprocess = preprocess if preprocess is not None else adapter.default_preprocess(model)
        self.text_cache = text_cache if text_cache is not None else TextEmbeddingCache.default()
        self.fusion_normalize = fusion_normalize
        self.scale_override = logit_scale
        self.text_batch_size = text_batch_size
        self._fingerprint: str | None = None
        self._memo: OrderedDict[tuple[tuple[str, ...], torch.device], torch.Tensor] = OrderedDict()

    @classmethod
    def from_pretrained(
        cls, name: str, *, device: str | torch.device | None = None, **kwargs: Any
    ) -> DualEncoderScorer:
        """Load ``<prefix>:<spec>``; raises ``ModelUnavailable`` when the weights are not here."""
        family, sep, spec = name.partition(":")
        if not sep or family not in ADAPTERS or not spec:
            raise ValueError(f"expected <prefix>:<model>, prefix one of {sorted(ADAPTERS)}; got {name!r}")
        adapter = ADAPTERS[family]
        model, tokenizer, preprocess = adapter.load(spec)
        scorer = cls(model, tokenizer, adapter, name=name, preprocess=preprocess, **kwargs)
        return scorer.to(device) if device is not None else scorer

    def save_pretrained(self, directory: str | Path) -> None:
        """Model, tokenizer and ``preprocessor_config.json``: ``load_scorer(prefix + ":" + dir)`` reloads it."""
        self.adapter.save(self.model, self.tokenizer, self.preprocess, Path(directory))

    def train(self, mode: bool = True) -> DualEncoderScorer:
        return super().train(False)  # dropout would make logits (and the cache) non-deterministic

    # -- properties -----------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def logit_scale(self) -> torch.Tensor:
        if self.scale_override is not None:
            return torch.tensor(float(self.scale_override), device=self.device)
        return self.adapter.logit_scale(self.model).detach().float().to(self.device)

    @property
    def logit_bias(self) -> torch.Tensor | None:
        """SigLIP's additive bias (not part of the returned logits; see the module docstring)."""
        bias = self.adapter.logit_bias(self.model)
        return None if bias is None else bias.detach().float()

    @property
    def text_fingerprint(self) -> str:
        """Cache key of this text encoder: name, sampled weights, tokenizer and its settings."""
        if self._fingerprint is None:
            probe = self.adapter.tokenize(self.tokenizer, self.model, [FINGERPRINT_PROBE])
            ids = [tensor.tolist() for tensor in probe.values()]
            self._fingerprint = model_fingerprint(
                self.name, self.model, ids, self.adapter.tokenizer_settings(self.model)
            )
        return self._fingerprint

    # -- embeddings -----------------------------------------------------------------------------

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Raw image embeddings (B, D), differentiable w.r.t. ``images`` in [0, 1]."""
        pixels = self.preprocess(images.to(self.device)).to(self.dtype)
        return self.adapter.image_features(self.model, pixels).float()

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        tokens = self.adapter.tokenize(self.tokenizer, self.model, texts)
        return {key: value.to(self.device) for key, value in tokens.items()}

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Raw text embeddings (N, D) straight from the text encoder, no cache (float32 numpy)."""
        out: list[np.ndarray | None] = [None] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # little padding per batch
        for start in range(0, len(order), self.text_batch_size):
            index = order[start : start + self.text_batch_size]
            features = self.adapter.text_features(self.model, self.tokenize([texts[i] for i in index]))
            for i, row in zip(index, features.float().cpu().numpy(), strict=True):
                out[i] = row
        return np.stack(out) if out else np.zeros((0, 0), dtype=np.float32)  # type: ignore[arg-type]

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Raw text embeddings (N, D) on the model's device through the cache; constants (no grad).

        The last few results are memoised as tensors too: an attack asks for the same candidates
        and contexts at every step.
        """
        key = (tuple(texts), self.device)
        if key in self._memo:
            self._memo.move_to_end(key)
            return self._memo[key]
        vectors = self.text_cache.embed(self.text_fingerprint, key[0], self.embed_texts)
        tensor = self._memo[key] = torch.from_numpy(vectors).to(key[1])
        while len(self._memo) > MEMO_BATCHES:
            self._memo.popitem(last=False)
        return tensor

    def query(self, images: torch.Tensor | None, texts: Sequence[str] | None) -> torch.Tensor:
        """The unit query vector (B, D) of the current task."""
        if self.task == "t2t":
            return F.normalize(self.encode_texts(texts), dim=-1)  # type: ignore[arg-type]
        image = self.encode_images(images)  # type: ignore[arg-type]
        if self.task == "i2t":
            return F.normalize(image, dim=-1)
        return fuse_it2t(image, self.encode_texts(texts), self.fusion_normalize)  # type: ignore[arg-type]

    def forward(
        self,
        images: torch.Tensor | None,
        texts: Sequence[str] | None,
        candidate_texts: Sequence[Sequence[str]],
    ) -> torch.Tensor:
        batch, n = self.check_inputs(images, texts, candidate_texts)
        candidates = self.encode_texts([text for row in candidate_texts for text in row]).view(batch, n, -1)
        return cosine_logits(self.query(images, texts), candidates, self.logit_scale)


def load_dual_encoder(name: str, **kwargs: Any) -> DualEncoderScorer:
    """Registry factory for every prefix in ``ADAPTERS`` (see ``tools.scorers.load_scorer``)."""
    return DualEncoderScorer.from_pretrained(name, **kwargs)
