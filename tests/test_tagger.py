"""The offline tagger dual encoder: real weights, the scorer contract, gradients to pixels."""

from __future__ import annotations

import pytest
import torch

from kb.dataset import load_dataset
from kb.images import load_rgb, to_tensor
from tools.scorers import load_scorer
from tools.scorers.base import candidate_prompt


@pytest.fixture(scope="module")
def tagger():
    return load_scorer("tagger", task="i2t")


@pytest.fixture(scope="module")
def demo():
    return load_dataset("demo")


def _pixels(demo, mention_id: str) -> torch.Tensor:
    return to_tensor(load_rgb(demo.mention(mention_id).image_path)).unsqueeze(0)


def test_name_and_contract(tagger, demo) -> None:
    assert tagger.name == "tagger:efficientnet-lite0+minilm"
    labels = [candidate_prompt(e.label) for e in demo.entities.values()]
    logits = tagger(_pixels(demo, "chelsea-0"), None, [labels])
    assert logits.shape == (1, len(labels)) and float(logits.abs().max()) <= 100.0 + 1e-4
    ranked = [list(demo.entities)[i] for i in logits[0].argsort(descending=True)]
    assert ranked.index("Q146") < 3  # the cat photo puts "cat" in the top 3 of 19


def test_gradients_reach_pixels(tagger, demo) -> None:
    pixels = _pixels(demo, "rocket-0").requires_grad_()
    tagger(pixels, None, [[candidate_prompt("rocket"), candidate_prompt("coffee")]])[:, 0].sum().backward()
    assert pixels.grad is not None and float(pixels.grad.abs().sum()) > 0


def test_tasks_follow_the_seed_rules(tagger, demo) -> None:
    """Paper 000's three tasks, the expectation written out from the real parts, not from the
    tagger's functions: the image embedding is the EfficientNet-Lite0 posterior (its evaluation
    transform by torchvision: short side 256 bicubic, centre 224, (x - 0.5) / 0.5) weighting the
    MiniLM embeddings of "a photo of a <class>"; the context and the candidates are MiniLM
    embeddings; IT2T adds the unit image and unit context embeddings element-wise and normalises
    the sum; every task's logits are cosine x 100."""
    from torchvision.transforms.v2 import functional as TF

    from tools import registry

    pixels = _pixels(demo, "coffee-0")
    context = demo.mention("coffee-0").context_text()
    labels = [candidate_prompt("coffee"), candidate_prompt("tea"), candidate_prompt("house cat")]
    minilm, classifier = registry.get("minilm"), registry.get("efficientnet-lite0")

    def unit(x: torch.Tensor) -> torch.Tensor:
        return x / x.norm(dim=-1, keepdim=True)

    classes = registry.imagenet_classes()
    sample = [0, 281, 504, 967, 999]  # the class-prompt table holds MiniLM's "a photo of a <class>"
    prompts = torch.from_numpy(minilm.encode([f"a photo of a {classes[i]}" for i in sample]))
    assert torch.allclose(unit(tagger.class_embeddings[sample]), unit(prompts), atol=1e-5)
    x = TF.resize(pixels, 256, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    x = (TF.center_crop(x, [224, 224]) - 0.5) / 0.5
    with torch.no_grad():
        posterior = classifier(x).softmax(dim=-1)
    image = unit(posterior @ tagger.class_embeddings)
    text = unit(torch.from_numpy(minilm.encode([context])))
    rows = unit(torch.from_numpy(minilm.encode(labels)))
    queries = {"i2t": image, "t2t": text, "it2t": unit(image + text)}
    got = {}
    for task, query in queries.items():
        tagger.task = task
        with torch.no_grad():
            got[task] = tagger(pixels, [context], [labels])
        torch.testing.assert_close(got[task], 100.0 * query @ rows.T, atol=1e-4, rtol=0, msg=task)
    tagger.task = "i2t"
    # IT2T is neither modality alone: both move its logits
    assert (got["it2t"] - got["i2t"]).abs().max() > 0.5 and (got["it2t"] - got["t2t"]).abs().max() > 0.5


def test_ocr_variant_reads_words_in_images() -> None:
    from kb.loaders.demo import package_file

    ocr = load_scorer("tagger+ocr", task="i2t")
    words = ocr.read_words(to_tensor(load_rgb(package_file("skimage", "data/page.png"))).unsqueeze(0))
    assert ocr.name.endswith("+ocr") and len(words[0]) > 5


def test_ocr_words_move_the_logits_toward_the_candidate_they_name(tagger) -> None:
    """``tagger+ocr`` on a white card printed "OBAMA": the words RapidOCR reads join the image
    embedding, so the logits differ from plain ``tagger``'s and the gap in favour of the
    candidate the word names grows; an image without words scores as plain ``tagger``."""
    from PIL import Image, ImageDraw, ImageFont

    ocr = load_scorer("tagger+ocr", task="i2t")
    card = Image.new("RGB", (640, 200), "white")
    ImageDraw.Draw(card).text((20, 60), "OBAMA", fill="black", font=ImageFont.load_default(size=72))
    pixels = to_tensor(card).unsqueeze(0)
    candidates = [["a photo of Barack Obama", "a photo of Chelsea F.C."]]
    assert ocr.read_words(pixels) == ["OBAMA"]
    with torch.no_grad():
        plain, read = tagger(pixels, None, candidates)[0], ocr(pixels, None, candidates)[0]
        blank = to_tensor(Image.new("RGB", (640, 200), "white")).unsqueeze(0)
        assert torch.allclose(ocr(blank, None, candidates), tagger(blank, None, candidates))
    assert not torch.allclose(plain, read)
    assert float(read[0] - read[1]) > float(plain[0] - plain[1]) + 1.0, (plain, read)
