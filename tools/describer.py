"""Image -> word-level descriptors, the agent's first look at a (clean or adversarial) image.

Offline default (``efficientnet-lite0+rapidocr``): EfficientNet-Lite0's top-k ImageNet labels,
plus a coarse parent word (``dog``, ``cat``, ``bird``, ``car``, ...) for labels inside a group of
``PARENTS`` scored by the posterior mass of the whole group, plus RapidOCR's words. With a VLM
configured (``MEL_VLM_BASE_URL`` or ``make_describer(vlm=settings)``), the words come from a
vision-language model behind the OpenAI-compatible interface (``vlm:<model>``) instead. RapidOCR
words are read in both cases when ``ocr`` is on (``+rapidocr`` in the source), so the OCR
channel is the same model whichever describes the object.
"""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from tools import registry
from tools.llm import LLMSettings, chat_model
from tools.scorers.base import HALF, PixelPreprocess

# OCR lines RapidOCR is less sure of than this are dropped; words shorter than 3 characters
# (stray glyphs, "of", "to") carry little for linking and are mostly misreads.
OCR_MIN_SCORE = 0.5
OCR_MIN_LENGTH = 3

# Coarse parents of ImageNet-1k classes (0-based indices in torchvision's class order, the
# ILSVRC-2012 synset order). The animal groups are contiguous index ranges because that order
# walks the WordNet hierarchy (e.g. n02085620 Chihuahua .. n02113978 Mexican hairless = 151-268,
# every "dog, domestic dog" hyponym); artefacts are sorted alphabetically, so their groups list
# indices. Each group is a WordNet hypernym of all its members; tests pin every group's ends.
PARENTS: dict[str, tuple[int, ...]] = {
    "fish": (*range(0, 7), *range(389, 398)),
    "bird": (*range(7, 25), *range(80, 101), *range(127, 147)),
    "amphibian": tuple(range(25, 33)),
    "turtle": tuple(range(33, 38)),
    "lizard": tuple(range(38, 49)),
    "snake": tuple(range(52, 69)),
    "spider": tuple(range(72, 78)),
    "crustacean": tuple(range(118, 127)),
    "dog": tuple(range(151, 269)),
    "wolf": tuple(range(269, 272)),
    "fox": tuple(range(277, 281)),
    "cat": tuple(range(281, 286)),
    "big cat": tuple(range(288, 294)),
    "bear": tuple(range(294, 298)),
    "insect": tuple(range(300, 327)),
    "butterfly": tuple(range(321, 327)),
    "monkey": tuple(range(370, 383)),
    "ape": tuple(range(365, 370)),
    "elephant": (385, 386),
    "car": (407, 436, 468, 511, 609, 627, 656, 661, 751, 817),
    "truck": (555, 569, 675, 717, 734, 864, 867),
    "bus": (654, 779, 874),
    "aircraft": (404, 405, 417, 895),
    "boat": (472, 554, 576, 625, 814),
    "sailing vessel": (484, 780, 871, 914),
    "ship": (403, 510, 628, 724, 833),
    "musical instrument": (
        401,
        402,
        420,
        432,
        486,
        494,
        513,
        541,
        546,
        558,
        566,
        577,
        579,
        593,
        594,
        641,
        642,
        683,
        684,
        687,
        699,
        776,
        822,
        875,
        881,
        889,
    ),  # fmt: skip
    "vegetable": tuple(range(936, 947)),
    "fruit": tuple(range(948, 958)),
}

VLM_PROMPT = (
    "List up to {k} short descriptors (single words or two-word phrases) of the main object or "
    "person in this image, most certain first: what it is, its category, and any clearly "
    "visible name or text. Answer with the descriptors only, comma-separated, no sentences."
)


@dataclass(frozen=True)
class Descriptors:
    """What a describer saw: descriptors with scores (most confident first), OCR words, the source."""

    words: tuple[str, ...]
    scores: tuple[float, ...]
    ocr: tuple[str, ...]
    source: str

    def to_json(self) -> dict[str, Any]:
        return {
            key: list(value) if isinstance(value, tuple) else value for key, value in asdict(self).items()
        }


class Describer(Protocol):
    name: str

    def describe(self, image: torch.Tensor) -> Descriptors:
        """Descriptors of one (3, H, W) image with values in [0, 1]."""
        ...


class OcrReader:
    """RapidOCR words of an image: lines scored >= OCR_MIN_SCORE, words of >= OCR_MIN_LENGTH characters."""

    def __init__(self) -> None:
        self.engine = registry.get("rapidocr")

    def words(self, image: torch.Tensor) -> tuple[str, ...]:
        result, _ = self.engine(to_uint8(image)[:, :, ::-1].copy())  # RapidOCR expects BGR like OpenCV
        words: list[str] = []
        for _box, text, score in result or []:
            if float(score) < OCR_MIN_SCORE:
                continue
            for token in text.split():
                word = token.strip(".,;:!?\"'()[]{}")
                if len(word) >= OCR_MIN_LENGTH:
                    words.append(word)
        return _dedupe(words)


class ImageNetDescriber:
    """EfficientNet-Lite0 top-k ImageNet labels with their parents, plus OCR words (module doc)."""

    def __init__(self, top_k: int = 5, ocr: bool = True) -> None:
        self.top_k = top_k
        self.classifier = registry.get("efficientnet-lite0")
        # torchvision's names are single already; a WordNet-style "tabby, tabby cat" keeps its first.
        self.labels = [label.split(",")[0].strip() for label in registry.imagenet_classes()]
        # EfficientNet-Lite's evaluation transform, as in the tagger scorer: short side 256, centre 224.
        self.preprocess = PixelPreprocess(
            256, resize_mode="shortest", crop_size=224, mean=HALF, std=HALF, interpolation="bicubic"
        )
        self.parent_of: dict[int, list[str]] = {}
        for parent, members in PARENTS.items():
            for index in members:
                self.parent_of.setdefault(index, []).append(parent)
        self.members = {parent: torch.tensor(members) for parent, members in PARENTS.items()}
        self.ocr = OcrReader() if ocr else None
        self.name = "efficientnet-lite0+rapidocr" if ocr else "efficientnet-lite0"

    @torch.no_grad()
    def describe(self, image: torch.Tensor) -> Descriptors:
        # The classifier is shared through the registry; a scorer may have moved it to a GPU.
        device = next(self.classifier.parameters()).device
        pixels = self.preprocess.to(device)(_check(image).unsqueeze(0).float().to(device))
        probs = self.classifier(pixels).softmax(-1)[0].cpu()
        top = probs.topk(self.top_k)
        scored = [(self.labels[i], p) for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)]
        scored += [
            (parent, float(probs[self.members[parent]].sum()))
            for index in top.indices.tolist()
            for parent in self.parent_of.get(index, ())
        ]
        # Highest score first; a repeated word (a parent of two labels, "Cardigan" the dog and
        # "cardigan" the sweater) keeps its first, highest entry.
        ranked, seen = [], set()
        for word, score in sorted(scored, key=lambda item: -item[1]):
            if word.lower() not in seen:
                seen.add(word.lower())
                ranked.append((word, score))
        return Descriptors(
            words=tuple(word for word, _ in ranked),
            scores=tuple(score for _, score in ranked),
            ocr=self.ocr.words(image) if self.ocr else (),
            source=self.name,
        )


class VLMDescriber:
    """Descriptors from a vision-language model behind the OpenAI-compatible chat interface.

    The image goes as a ``data:image/png;base64`` ``image_url`` content part with ``VLM_PROMPT``:
    "List up to {k} short descriptors (single words or two-word phrases) of the main object or
    person in this image, most certain first ... comma-separated". The answer is split on commas,
    semicolons and new lines; list markers and quotes are stripped. A VLM gives no confidences,
    so scores fall linearly with rank (1, 1 - 1/k, ...).
    """

    def __init__(self, settings: LLMSettings, top_k: int = 5, ocr: bool = True) -> None:
        self.top_k = top_k
        self.model = chat_model(settings)
        self.ocr = OcrReader() if ocr else None
        self.suffix = "+rapidocr" if ocr else ""
        self.name = f"vlm:{settings.model or 'auto'}{self.suffix}"

    def describe(self, image: torch.Tensor) -> Descriptors:
        """Raises ``LLMError`` when the VLM gives no answer within its budget."""
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": VLM_PROMPT.format(k=self.top_k)},
                    {"type": "image_url", "image_url": {"url": png_data_url(_check(image))}},
                ],
            }
        ]
        reply = self.model.chat(messages, max_tokens=64)
        words = parse_descriptors(reply.text, self.top_k)
        return Descriptors(
            words=words,
            scores=tuple(1.0 - i / self.top_k for i in range(len(words))),
            ocr=self.ocr.words(image) if self.ocr else (),
            source=f"vlm:{reply.model}{self.suffix}",
        )


def make_describer(vlm: LLMSettings | None = None, top_k: int = 5, ocr: bool = True) -> Describer:
    """The VLM describer when ``vlm`` names a server (``base_url``), else the offline ImageNet one."""
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if vlm is not None and vlm.base_url:
        return VLMDescriber(vlm, top_k=top_k, ocr=ocr)
    return ImageNetDescriber(top_k=top_k, ocr=ocr)


def parse_descriptors(text: str, limit: int) -> tuple[str, ...]:
    """Up to ``limit`` descriptors from a comma/semicolon/line separated answer, deduplicated."""
    words = []
    for piece in re.split(r"[,;\n]", text):
        word = re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", piece).strip(" \t\"'`.*").lower()
        if word and len(word.split()) <= 4:
            words.append(word)
    return _dedupe(words)[:limit]


def png_data_url(image: torch.Tensor) -> str:
    """The image as a PNG ``data:`` URL (pixels rounded to 8 bits, as a saved PNG would be)."""
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) in [0, 1] -> (H, W, 3) uint8, rounded."""
    return image.detach().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()


def _check(image: torch.Tensor) -> torch.Tensor:
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"expected one (3, H, W) image in [0, 1], got shape {tuple(image.shape)}")
    return image.detach()


def _dedupe(words: Sequence[str]) -> tuple[str, ...]:
    seen: set[str] = set()
    kept = []
    for word in words:
        if word.lower() not in seen:
            seen.add(word.lower())
            kept.append(word)
    return tuple(kept)
