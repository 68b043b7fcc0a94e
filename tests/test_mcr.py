"""MCR (paper 003): equations 4, 8 and 9 on real offline backbones, checkpoints, training."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kb.dataset import load_dataset
from kb.images import load_rgb, to_tensor
from tools.scorers import load_scorer
from tools.scorers.mcr import MCRConfig, MCRScorer, load_mcr


@pytest.fixture(scope="module")
def model() -> MCRScorer:
    torch.manual_seed(0)
    return MCRScorer(MCRConfig(alpha=0.5), task="it2t").eval()


@pytest.fixture(scope="module")
def inputs():
    demo = load_dataset("demo")
    mention = demo.mention("coffee-0")
    pixels = to_tensor(load_rgb(mention.image_path)).unsqueeze(0)
    return pixels, [mention.context_text()], [["coffee", "tea", "Moon"]]


def test_fusion_is_equation_nine(model: MCRScorer, inputs) -> None:
    pixels, texts, labels = inputs
    with torch.no_grad():
        fused = model(pixels, texts, labels)
        s_image = model.image_similarity(pixels, labels)
        s_text = model.text_similarity(texts, labels)
    assert fused.shape == (1, 3)
    assert torch.allclose(fused, 0.5 * s_image + 0.5 * s_text, atol=1e-5)
    model.task = "t2t"
    assert torch.allclose(model(None, texts, labels), s_text)
    model.task = "i2t"
    assert torch.allclose(model(pixels, None, labels), s_image)
    model.task = "it2t"


def test_image_branch_is_tagger_cosine_over_tau(model: MCRScorer, inputs) -> None:
    pixels, _texts, labels = inputs
    tagger = load_scorer("tagger", task="i2t")
    prompts = [[f"a photo of {label}" for label in labels[0]]]
    with torch.no_grad():
        expected = tagger(pixels, None, prompts) / 100.0 / 0.07
        assert torch.allclose(model.image_similarity(pixels, labels), expected, atol=1e-4)


def test_checkpoint_round_trip(model: MCRScorer, inputs, tmp_path: Path) -> None:
    pixels, texts, labels = inputs
    with torch.no_grad():
        model.text_text.head.bias.add_(0.25)
        model.log_tau.fill_(-2.0)
        before = model(pixels, texts, labels)
    path = tmp_path / "mcr.pt"
    model.save(path)
    loaded = load_scorer("mcr", task="it2t", checkpoint=str(path))
    with torch.no_grad():
        assert torch.allclose(loaded(pixels, texts, labels), before, atol=1e-5)
    with pytest.raises(ValueError, match="needs --checkpoint"):
        load_mcr("mcr")


@pytest.mark.slow
def test_training_command_writes_a_loadable_checkpoint(
    tmp_path: Path, shared_mel: Path, wikimel_store: dict
) -> None:
    out = tmp_path / "mcr.pt"
    command = [
        sys.executable,
        "-m",
        "tools.train_mcr",
        "--dataset",
        "wikimel",
        "--data-dir",
        str(shared_mel / "wikimel"),
        "--limit",
        "12",
        "--folds",
        "2",
        "--out",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "fold 2/2" in result.stdout and out.is_file()
    state = torch.load(out, map_location="cpu", weights_only=False)
    # every train mention with its image on disk (43 mentions over 24 of WikiMEL's 26 images)
    assert state["report"]["train_mentions"] == 12 and state["report"]["train_image_mentions"] == 43
    assert state["report"]["training"]["image_steps"] == 43
    load_mcr("mcr", checkpoint=str(out))


def test_length_sorted_sub_batches_match_one_padded_batch(model: MCRScorer) -> None:
    labels = ["Grace Hopper", "Ada Lovelace", "Sir Richard Wallace, 1st Baronet", "Moon"] * 5
    texts = [f"caption {i} " + "word " * (i * 3) for i in range(len(labels))]
    encoder = model.text_text
    tokens = encoder.tokenizer(
        labels, texts, padding=True, truncation="only_second", max_length=64, return_tensors="pt"
    )
    with torch.no_grad():
        expected = encoder.head(encoder.encoder(**tokens).last_hidden_state[:, 0]).squeeze(-1)
        encoder.sub_batch = 3
        assert torch.allclose(encoder(labels, texts), expected, atol=1e-4)
        encoder.sub_batch = 64
