"""The offline tagger dual encoder: real weights, the scorer contract, gradients to pixels."""

from __future__ import annotations

import pytest
import torch

from kb.dataset import load_dataset
from kb.images import load_rgb, to_tensor
from tools.scorers import load_scorer
from tools.scorers.base import candidate_prompt, fuse_it2t


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
    pixels = _pixels(demo, "coffee-0")
    context = [demo.mention("coffee-0").context_text()]
    candidates = [[candidate_prompt("coffee"), candidate_prompt("tea")]]
    image = tagger.image_embedding(pixels)
    text = torch.from_numpy(tagger.embed_texts(context, kind="query"))
    rows = torch.from_numpy(tagger.embed_texts(candidates[0]))
    for task, query in (("i2t", image), ("t2t", text), ("it2t", fuse_it2t(image, text))):
        tagger.task = task
        expected = 100.0 * torch.nn.functional.normalize(query, dim=-1) @ rows.T
        assert torch.allclose(tagger(pixels, context, candidates), expected, atol=1e-4)
    tagger.task = "i2t"


def test_ocr_variant_reads_words_in_images() -> None:
    from kb.loaders.demo import package_file

    ocr = load_scorer("tagger+ocr", task="i2t")
    words = ocr.read_words(to_tensor(load_rgb(package_file("skimage", "data/page.png"))).unsqueeze(0))
    assert ocr.name.endswith("+ocr") and len(words[0]) > 5
