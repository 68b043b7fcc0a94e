"""The image describer: real photos through EfficientNet-Lite0, rendered text through RapidOCR,
the parent table against ImageNet's class order, and the VLM path over a real local server."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import skimage.data
import torch
from openai_faults_server import fault_server
from PIL import Image, ImageDraw, ImageFont

from tools.describer import (
    PARENTS,
    Descriptors,
    ImageNetDescriber,
    VLMDescriber,
    make_describer,
    parse_descriptors,
)
from tools.llm import LLMError, LLMSettings
from tools.registry import imagenet_classes


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(array)).permute(2, 0, 1).float() / 255


@pytest.fixture(scope="module")
def describer() -> ImageNetDescriber:
    return make_describer(top_k=5)


# Each group's first and last member, by name, so a shifted index cannot pass unnoticed.
PARENT_ENDS = {
    "fish": ("tench", "puffer"),
    "bird": ("cock", "albatross"),
    "amphibian": ("European fire salamander", "tailed frog"),
    "turtle": ("loggerhead", "box turtle"),
    "lizard": ("banded gecko", "Komodo dragon"),
    "snake": ("thunder snake", "sidewinder"),
    "spider": ("black and gold garden spider", "wolf spider"),
    "crustacean": ("Dungeness crab", "isopod"),
    "dog": ("Chihuahua", "Mexican hairless"),
    "wolf": ("timber wolf", "red wolf"),
    "fox": ("red fox", "grey fox"),
    "cat": ("tabby", "Egyptian cat"),
    "big cat": ("leopard", "cheetah"),
    "bear": ("brown bear", "sloth bear"),
    "insect": ("tiger beetle", "lycaenid"),
    "butterfly": ("admiral", "lycaenid"),
    "monkey": ("guenon", "squirrel monkey"),
    "ape": ("orangutan", "siamang"),
    "elephant": ("Indian elephant", "African elephant"),
    "car": ("ambulance", "sports car"),
    "truck": ("fire engine", "trailer truck"),
    "bus": ("minibus", "trolleybus"),
    "aircraft": ("airliner", "warplane"),
    "boat": ("canoe", "speedboat"),
    "sailing vessel": ("catamaran", "yawl"),
    "ship": ("aircraft carrier", "submarine"),
    "musical instrument": ("accordion", "violin"),
    "vegetable": ("head cabbage", "cardoon"),
    "fruit": ("Granny Smith", "pomegranate"),
}


def test_parent_table_follows_imagenet_order() -> None:
    names = imagenet_classes()
    assert set(PARENTS) == set(PARENT_ENDS)
    for parent, members in PARENTS.items():
        assert len(set(members)) == len(members) and all(0 <= i < 1000 for i in members), parent
        ordered = sorted(members)
        assert (names[ordered[0]], names[ordered[-1]]) == PARENT_ENDS[parent], parent
    assert names[151:269] == [n for i, n in enumerate(names) if i in PARENTS["dog"]]
    assert "coyote" not in [names[i] for i in PARENTS["wolf"]]
    assert "passenger car" not in [names[i] for i in PARENTS["car"]]  # a railway car


def test_cat_photo_is_described_as_a_cat(describer) -> None:
    out = describer.describe(_tensor(skimage.data.chelsea()))
    assert isinstance(out, Descriptors) and out.source == "efficientnet-lite0+rapidocr"
    assert out.words[0] == "cat" and out.scores[0] > 0.5
    assert {"tabby", "tiger cat", "Egyptian cat"} & set(out.words)
    assert list(out.scores) == sorted(out.scores, reverse=True) and len(set(out.words)) == len(out.words)
    # 5 labels plus the parents of those in a group
    assert 5 <= len(out.words) <= 7 and out.ocr == ()
    assert json.loads(json.dumps(out.to_json()))["words"][0] == "cat"


def test_coffee_photo_is_described_as_coffee(describer) -> None:
    out = describer.describe(_tensor(skimage.data.coffee()))
    assert out.words[0] in {"espresso", "cup", "coffee mug"}
    assert "cat" not in out.words and "dog" not in out.words


def test_ocr_reads_rendered_words_and_drops_short_ones(describer) -> None:
    image = Image.new("RGB", (640, 200), "white")
    ImageDraw.Draw(image).text(
        (20, 60), "OBAMA 2008 to go", fill="black", font=ImageFont.load_default(size=56)
    )
    out = describer.describe(_tensor(np.asarray(image)))
    assert out.ocr == ("OBAMA", "2008")


def test_perturbed_pixels_still_describe_and_bad_shapes_fail(describer) -> None:
    image = _tensor(skimage.data.chelsea())
    noisy = (
        image + 8 / 255 * torch.randn(image.shape, generator=torch.Generator().manual_seed(0)).sign()
    ).clamp(0, 1)
    assert describer.describe(noisy).words
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        describer.describe(image.unsqueeze(0))


def test_without_ocr() -> None:
    plain = make_describer(ocr=False, top_k=2)
    assert plain.name == "efficientnet-lite0" and plain.describe(_tensor(skimage.data.chelsea())).ocr == ()


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("cat, tabby, pet", ("cat", "tabby", "pet")),
        ("1. Cat\n2. Tabby cat\n3. Window", ("cat", "tabby cat", "window")),
        ("- cup\n- espresso; saucer.", ("cup", "espresso", "saucer")),
        (
            '"Obama", Obama, president, white house, a man standing at a podium in front of flags',
            ("obama", "president", "white house"),
        ),
    ],
)
def test_parse_descriptors(answer: str, expected: tuple[str, ...]) -> None:
    assert parse_descriptors(answer, 5) == expected


def test_vlm_describer_sends_the_image_and_parses_the_answer() -> None:
    image = _tensor(skimage.data.chelsea())
    with fault_server(answer="cat, tabby cat, pet, whiskers, window, sofa") as server:
        describer = make_describer(LLMSettings(base_url=server.url, model="qwen2.5-vl"), top_k=4, ocr=False)
        assert isinstance(describer, VLMDescriber) and describer.name == "vlm:qwen2.5-vl"
        out = describer.describe(image)
    assert out.words == ("cat", "tabby cat", "pet", "whiskers") and out.scores == (1.0, 0.75, 0.5, 0.25)
    assert out.source == "vlm:fault-model" and out.ocr == ()
    text, picture = server.bodies[-1]["messages"][0]["content"]
    assert "up to 4" in text["text"]
    url = picture["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    sent = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))
    assert sent.shape == skimage.data.chelsea().shape and np.array_equal(sent, skimage.data.chelsea())


def test_vlm_failure_surfaces_as_llm_error() -> None:
    with fault_server(default="500") as server:
        settings = LLMSettings(base_url=server.url, model="m", retries=1, backoff_s=0.01, budget_s=5)
        with pytest.raises(LLMError, match="HTTP 500"):
            make_describer(settings, ocr=False).describe(_tensor(skimage.data.coffee()))


def test_vlm_settings_without_url_stay_offline() -> None:
    assert isinstance(make_describer(LLMSettings(), ocr=False), ImageNetDescriber)
    with pytest.raises(ValueError):
        make_describer(top_k=0)
