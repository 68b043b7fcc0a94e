"""The scorer contract: pixels and texts in, one logit per candidate entity out.

A scorer is a ``torch.nn.Module`` whose ``forward(images, texts, candidate_texts)`` returns
logits of shape (B, n_candidates) = cosine similarity x the model's logit scale, so the same
object serves evaluation (argmax / ranking) and white-box attacks (cross-entropy, CW margin).

* ``images``: float tensor (B, 3, H, W), RGB in [0, 1], any H and W. Resizing, cropping and
  mean/std normalisation happen inside ``forward`` (``PixelPreprocess``), in torch, so an
  attack's epsilon is measured in pixel space and gradients reach the pixels.
* ``texts``: B mention-context strings, or None when the task does not read them.
* ``candidate_texts``: B lists of the same length n. A candidate's text is
  ``candidate_prompt(label)`` ("a photo of <label>", paper 000) or an enriched description
  (the LLM-RetLink "Model*" variant). Candidate embeddings are constants: no gradient.

Tasks (seed paper 000, "Tasks & Evaluation"). The task is an attribute of the scorer, set at
construction or assigned later (``scorer.task = "it2t"``), so every caller (attack, evaluation
loop) calls ``forward`` the same way whatever the task:

* ``i2t``: the image embedding against the candidate embeddings.
* ``it2t``: the mention context is encoded by the same text encoder and fused with the image
  embedding by element-wise addition, then normalised; cosine against the candidates.
* ``t2t``: the context embedding alone against the candidates (no image; a text baseline).

Which family supports which task, and its candidate-text template, is declared in the family
table (``tools.scorers.families``); a new scorer family (the image tagger, MCR) adds its row
there and subclasses ``Scorer``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F

# Task, TASKS, PROMPT_TEMPLATE, candidate_prompt and template_for are defined with the family
# table and stay importable from here (eval.run, the tagger and MCR import them from base).
from tools.scorers.families import (  # noqa: F401
    PROMPT_TEMPLATE,
    TASKS,
    Task,
    candidate_prompt,
    supported_tasks,
    template_for,
)


def fuse_it2t(image: torch.Tensor, text: torch.Tensor, normalize_inputs: bool = True) -> torch.Tensor:
    """Paper 000's IT2T query: element-wise addition of image and context embeddings, normalised.

    The paper does not say whether the two embeddings are unit vectors before the addition;
    ``normalize_inputs=True`` (the default) adds unit vectors, as CLIP code does right after
    encoding, which also weights both modalities equally whatever their raw norms (ALIGN's
    image embedding is an unprojected pooled feature with a very different norm).
    """
    if normalize_inputs:
        image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    return F.normalize(image + text, dim=-1)


# --------------------------------------------------------------------------------------------
# Differentiable image preprocessing
# --------------------------------------------------------------------------------------------

ResizeMode = Literal["shortest", "squash", "longest"]
"""``shortest``: shortest edge to ``size`` keeping aspect (CLIP); ``squash``: to exactly
(height, width) (SigLIP, BLIP); ``longest``: longest edge to ``size`` then zero-pad (open_clip)."""

PIL_RESAMPLE = {0: "nearest", 1: "bicubic", 2: "bilinear", 3: "bicubic", 4: "bilinear", 5: "bilinear"}
"""PIL resample code in an image-processor config -> torch mode (Lanczos, box and Hamming map to
their nearest torch kernel)."""

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    height, width = value
    return (int(height), int(width))


class PixelPreprocess(torch.nn.Module):
    """(B, 3, H, W) in [0, 1] -> model input, differentiable, mirroring a PIL image processor.

    Resizing uses ``F.interpolate`` with ``antialias=True`` (PIL always antialiases when it
    shrinks), the crop is HF's centre crop (floor offsets, zero padding when too small), and
    normalisation folds rescale factors and offsets into one per-channel mean and std. Values
    are not clamped after bicubic overshoot (PIL clamps to uint8): clamping would zero the
    gradient of those pixels, and the two differ only where a sharp edge overshoots [0, 1]
    (on natural images the mean difference is below one grey level; see the tests).
    """

    def __init__(
        self,
        size: int | Sequence[int],
        *,
        resize_mode: ResizeMode = "squash",
        crop_size: int | Sequence[int] | None = None,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        interpolation: str = "bicubic",
        antialias: bool = True,
    ) -> None:
        super().__init__()
        if resize_mode not in get_args(ResizeMode):
            raise ValueError(f"resize_mode must be one of {get_args(ResizeMode)}, got {resize_mode!r}")
        if resize_mode != "squash" and not isinstance(size, int):
            raise ValueError(f"resize_mode={resize_mode!r} needs an int size, got {size!r}")
        self.size = size if isinstance(size, int) and resize_mode != "squash" else _pair(size)
        self.resize_mode = resize_mode
        self.crop_size = None if crop_size is None else _pair(crop_size)
        self.interpolation = interpolation
        self.antialias = antialias
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self._inputs_resized = False

    @property
    def output_size(self) -> tuple[int, int] | None:
        """(height, width) the model sees, or None when it depends on the input's aspect."""
        if self.crop_size is not None:
            return self.crop_size
        if self.resize_mode == "squash":
            return self.size  # type: ignore[return-value]
        if self.resize_mode == "longest":
            return (self.size, self.size)  # type: ignore[return-value]
        return None

    def resized_shape(self, height: int, width: int) -> tuple[int, int]:
        if self.resize_mode == "squash":
            return self.size  # type: ignore[return-value]
        size: int = self.size  # type: ignore[assignment]
        if self.resize_mode == "shortest":
            # transformers' get_resize_output_image_size and torchvision's Resize(int) agree:
            # the short edge becomes `size`, the long edge int(size * long / short).
            if height <= width:
                return (size, int(size * width / height))
            return (int(size * height / width), size)
        scale = size / max(height, width)
        return (max(1, round(height * scale)), max(1, round(width * scale)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise TypeError(f"images must be float in [0, 1], got {images.dtype}")
        if getattr(self, "_inputs_resized", False):
            if tuple(images.shape[-2:]) != self.output_size:
                raise ValueError(f"resized inputs must be {self.output_size}, got {tuple(images.shape[-2:])}")
            return self.normalize(images)
        return self.normalize(self.resize_crop(images))

    @contextmanager
    def inputs_resized(self) -> Iterator[None]:
        """Within: ``forward`` takes ``resize_crop``'s output and only normalises it.

        The per-image hook of mixed-size batches (``attacks.target``): each image is resized and
        cropped on its own, the results are stacked, and the scorer runs one forward on them.
        Needs a fixed ``output_size``.
        """
        if self.output_size is None:
            raise ValueError(f"{self!r} has no fixed output size: its inputs cannot be pre-resized")
        self._inputs_resized = True
        try:
            yield
        finally:
            self._inputs_resized = False

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std per channel: the model's input from [0, 1] pixels of its input size."""
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def resize_crop(self, images: torch.Tensor) -> torch.Tensor:
        """The geometric part of ``forward`` (resize, crop or pad), still in [0, 1], differentiable."""
        height, width = images.shape[-2:]
        target = self.resized_shape(height, width)
        x = images
        if target != (height, width):
            smooth = self.interpolation in ("bilinear", "bicubic")
            x = F.interpolate(
                x,
                size=target,
                mode=self.interpolation,
                antialias=self.antialias and smooth,
                **({"align_corners": False} if smooth else {}),
            )
        if self.resize_mode == "longest":
            x = center_crop_or_pad(x, (self.size, self.size))  # type: ignore[arg-type]
        if self.crop_size is not None:
            x = center_crop_or_pad(x, self.crop_size)
        return x

    def extra_repr(self) -> str:
        return (
            f"size={self.size}, resize_mode={self.resize_mode}, crop_size={self.crop_size}, "
            f"interpolation={self.interpolation}, antialias={self.antialias}"
        )

    # -- image-processor configs ----------------------------------------------------------------

    @classmethod
    def from_processor_config(
        cls, config: Mapping[str, Any], default: PixelPreprocess, *, int_size_is_shortest_edge: bool = False
    ) -> PixelPreprocess:
        """Read a saved transformers image-processor config (``preprocessor_config.json``).

        Missing keys keep ``default``'s values. ``int_size_is_shortest_edge`` follows how the
        processor class reads a legacy integer ``size`` (CLIP: shortest edge; most: square).
        A processor maps uint8 ``v`` to ``((v * rescale_factor + offset) - mean) / std``; with
        ``v = 255 x`` that is one affine map of ``x``, stored as an effective mean and std.
        """
        size_cfg = config.get("size")
        if size_cfg is None:
            size, mode = default.size, default.resize_mode
        else:
            if isinstance(size_cfg, int):
                size_cfg = (
                    {"shortest_edge": size_cfg}
                    if int_size_is_shortest_edge
                    else {"height": size_cfg, "width": size_cfg}
                )
            if "shortest_edge" in size_cfg:
                size, mode = int(size_cfg["shortest_edge"]), "shortest"
            elif "height" in size_cfg:
                size, mode = (int(size_cfg["height"]), int(size_cfg["width"])), "squash"
            elif "longest_edge" in size_cfg:
                size, mode = int(size_cfg["longest_edge"]), "longest"
            else:
                raise ValueError(f"unrecognised image-processor size {size_cfg!r}")
        crop = default.crop_size
        if "do_center_crop" in config or "crop_size" in config:
            crop = None
            if config.get("do_center_crop", default.crop_size is not None):
                crop_cfg = config.get("crop_size", default.crop_size)
                if isinstance(crop_cfg, Mapping):
                    crop_cfg = (crop_cfg["height"], crop_cfg["width"])
                crop = None if crop_cfg is None else _pair(crop_cfg)
        resample = config.get("resample")
        interpolation = (
            PIL_RESAMPLE.get(int(resample), "bicubic") if resample is not None else default.interpolation
        )

        if not any(k in config for k in ("image_mean", "image_std", "do_normalize", "rescale_factor")):
            mean, std = default.mean.flatten().tolist(), default.std.flatten().tolist()
        else:
            scale = (
                255.0 * float(config.get("rescale_factor", 1 / 255))
                if config.get("do_rescale", True)
                else 255.0
            )
            offset = -1.0 if config.get("rescale_offset", False) else 0.0
            mean, std = [], []
            for c in range(3):
                a, b = scale, offset  # y = a * x + b
                if config.get("do_normalize", True):
                    m, s = (
                        _channel(config.get("image_mean", CLIP_MEAN), c),
                        _channel(config.get("image_std", CLIP_STD), c),
                    )
                    a, b = a / s, (b - m) / s
                if config.get("include_top", False):  # EfficientNet's extra division by std
                    s = _channel(config.get("image_std", CLIP_STD), c)
                    a, b = a / s, b / s
                mean.append(-b / a)
                std.append(1.0 / a)
        return cls(size, resize_mode=mode, crop_size=crop, mean=mean, std=std, interpolation=interpolation)

    def to_processor_config(self, image_processor_type: str | None = None) -> dict[str, Any]:
        """A ``preprocessor_config.json`` dict equivalent to this module (inverse of the above)."""
        if self.resize_mode == "squash":
            size: dict[str, int] = {"height": self.size[0], "width": self.size[1]}  # type: ignore[index]
        else:
            size = {f"{self.resize_mode}_edge": self.size}  # type: ignore[dict-item]
        config: dict[str, Any] = {
            "do_resize": True,
            "size": size,
            "resample": 2
            if self.interpolation == "bilinear"
            else 0
            if self.interpolation == "nearest"
            else 3,
            "do_center_crop": self.crop_size is not None,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": self.mean.flatten().tolist(),
            "image_std": self.std.flatten().tolist(),
        }
        if self.crop_size is not None:
            config["crop_size"] = {"height": self.crop_size[0], "width": self.crop_size[1]}
        if image_processor_type:
            config["image_processor_type"] = image_processor_type
        return config


def _channel(value: float | Sequence[float], c: int) -> float:
    return float(value) if isinstance(value, int | float) else float(value[c])


def center_crop_or_pad(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """transformers' ``center_crop``: floor offsets, zero padding where the image is smaller."""
    height, width = images.shape[-2:]
    th, tw = size
    if th > height or tw > width:
        pad_h, pad_w = max(th - height, 0), max(tw - width, 0)
        images = F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        height, width = images.shape[-2:]
    top, left = (height - th) // 2, (width - tw) // 2
    return images[..., top : top + th, left : left + tw]


# --------------------------------------------------------------------------------------------
# The scorer base class
# --------------------------------------------------------------------------------------------


class Scorer(torch.nn.Module, ABC):
    """Base of every scorer: a family, a name, a task, and the (B, n) logits ``forward``.

    ``name`` says exactly which model it is (``clip:openai/clip-vit-base-patch32``); its prefix
    before the first colon is the ``family`` whose row in ``families.FAMILIES`` says its tasks.
    """

    def __init__(self, name: str, family: str, task: Task = "i2t") -> None:
        super().__init__()
        self.name = name
        self.family = family
        self.task = task

    @property
    def supported_tasks(self) -> tuple[Task, ...]:
        return supported_tasks(self.family)

    @property
    def task(self) -> Task:
        return self._task

    @task.setter
    def task(self, task: Task) -> None:
        if task not in self.supported_tasks:
            raise ValueError(f"{self.name} supports tasks {self.supported_tasks}, not {task!r}")
        self._task = task

    @abstractmethod
    def forward(
        self,
        images: torch.Tensor | None,
        texts: Sequence[str] | None,
        candidate_texts: Sequence[Sequence[str]],
    ) -> torch.Tensor:
        """Logits (B, n) = cosine x logit scale for the scorer's current task."""

    def check_inputs(
        self,
        images: torch.Tensor | None,
        texts: Sequence[str] | None,
        candidate_texts: Sequence[Sequence[str]],
    ) -> tuple[int, int]:
        """(B, n) after checking that the inputs the current task reads are there and agree."""
        if isinstance(candidate_texts, str) or not candidate_texts:
            raise ValueError("candidate_texts must be a non-empty list of B lists of strings")
        batch = len(candidate_texts)
        widths = {len(row) for row in candidate_texts}
        if len(widths) != 1 or 0 in widths:
            raise ValueError(
                f"every row of candidate_texts needs the same, non-zero length; got {sorted(widths)}"
            )
        if self.task in ("i2t", "it2t"):
            if images is None:
                raise ValueError(f"task {self.task!r} needs images")
            if images.shape[0] != batch:
                raise ValueError(f"{images.shape[0]} images for {batch} candidate lists")
        if self.task in ("it2t", "t2t"):
            if texts is None or isinstance(texts, str):
                raise ValueError(f"task {self.task!r} needs a list of B context texts")
            if len(texts) != batch:
                raise ValueError(f"{len(texts)} context texts for {batch} candidate lists")
        return batch, widths.pop()

    def pixel_preprocess(self) -> PixelPreprocess | None:
        """The one ``PixelPreprocess`` every image goes through first, or None when there is none,
        several, or a part of the scorer reads the raw pixels (the tagger's OCR).

        With it, images of different sizes can share one forward: resize each with
        ``resize_crop``, stack, and call ``forward`` inside ``inputs_resized()``.
        """
        found = [m for m in self.modules() if isinstance(m, PixelPreprocess)]
        raw_readers = [m for m in self.modules() if getattr(m, "ocr", None) is not None]
        if len(found) != 1 or raw_readers or found[0].output_size is None:
            return None
        return found[0]

    def extra_repr(self) -> str:
        return f"name={self.name!r}, task={self.task!r}"


def cosine_logits(query: torch.Tensor, candidates: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """scale * cos(query_b, candidate_bj): (B, D) x (B, n, D) -> (B, n)."""
    query = F.normalize(query, dim=-1)
    candidates = F.normalize(candidates, dim=-1)
    return torch.einsum("bd,bnd->bn", query, candidates) * scale
