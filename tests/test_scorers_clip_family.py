"""CLIP-family scorers, tested on tiny randomly initialised models of the real classes.

No weights exist on this machine, so every architecture is built from a tiny config of its real
transformers / open_clip class (hidden size 32, one layer, 32x32 images) with a WordPiece
tokenizer whose vocabulary is written here. The scorers' logits are checked against each
model's own forward pass, not against a re-implementation.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import copy
import json
import string
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers as T
from tokenizers.normalizers import BertNormalizer

from tools.hub import ModelUnavailable
from tools.scorers import (
    TASKS,
    PixelPreprocess,
    Scorer,
    candidate_prompt,
    load_scorer,
    register_scorer,
)
from tools.scorers import families as family_table
from tools.scorers.clip_family import ADAPTERS, DualEncoderScorer
from tools.scorers.text_cache import TextEmbeddingCache, default_cache_dir

HF_FAMILIES = ["clip", "siglip", "align", "blip", "flava", "owlvit", "chineseclip"]
FAMILIES = [*HF_FAMILIES, "openclip"]

CONTEXTS = ["obama speaks at the white house", "a black cat sleeps on a red mat"]
CANDIDATES = [
    [candidate_prompt("barack obama"), candidate_prompt("michelle obama"), candidate_prompt("white house")],
    [candidate_prompt("cat"), candidate_prompt("garfield"), "a doormat: a flat mat at an entrance."],
]

VOCAB = 96
TEXT = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=37,
    num_hidden_layers=1,
    num_attention_heads=2,
    max_position_embeddings=32,
)
VISION = dict(
    hidden_size=32,
    intermediate_size=37,
    num_hidden_layers=1,
    num_attention_heads=2,
    image_size=32,
    patch_size=16,
)
EFFICIENTNET = dict(
    image_size=32,
    kernel_sizes=[3, 3],
    in_channels=[32, 16],
    out_channels=[16, 64],
    strides=[1, 2],
    num_block_repeats=[1, 1],
    expand_ratios=[1, 2],
    hidden_dim=64,
    width_coefficient=0.25,
    depthwise_padding=[],
)
OPEN_CLIP_CFG = {
    "model_cfg": {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    },
    "preprocess_cfg": {"interpolation": "bicubic", "resize_mode": "shortest"},
}


def build_hf(family: str) -> torch.nn.Module:
    """A tiny random model of the family's real transformers class."""
    torch.manual_seed(0)
    if family == "clip":
        text = TEXT | dict(bos_token_id=2, eos_token_id=3, pad_token_id=0)  # [CLS] / [SEP] / [PAD]
        return T.CLIPModel(T.CLIPConfig(text_config=text, vision_config=VISION, projection_dim=16))
    if family == "siglip":
        return T.SiglipModel(T.SiglipConfig(text_config=TEXT | dict(pad_token_id=0), vision_config=VISION))
    if family == "align":
        config = T.AlignConfig(text_config=TEXT, vision_config=EFFICIENTNET, projection_dim=16)
        return T.AlignModel(config)
    if family == "blip":
        return T.BlipForImageTextRetrieval(
            T.BlipConfig(text_config=TEXT, vision_config=VISION, image_text_hidden_size=16)
        )
    if family == "flava":
        multimodal = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2)
        config = T.FlavaConfig(
            text_config=TEXT,
            image_config=VISION,
            multimodal_config=multimodal,
            projection_dim=16,
            hidden_size=32,
        )
        return T.FlavaModel(config)
    if family == "owlvit":
        text = TEXT | dict(max_position_embeddings=16)
        return T.OwlViTModel(T.OwlViTConfig(text_config=text, vision_config=VISION, projection_dim=16))
    if family == "chineseclip":
        return T.ChineseCLIPModel(
            T.ChineseCLIPConfig(text_config=TEXT, vision_config=VISION, projection_dim=16)
        )
    raise KeyError(family)


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> T.BertTokenizerFast:
    """A WordPiece tokenizer over characters: every lowercase text tokenises, ids < VOCAB."""
    chars = list(string.ascii_lowercase + string.digits + ".,:()'-")
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "photo", "of", *chars, *("##" + c for c in chars)]
    assert len(tokens) <= VOCAB
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n")
    return T.BertTokenizerFast(vocab_file=str(path), do_lower_case=True)


@pytest.fixture(scope="session")
def open_clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local open_clip model directory (config + random weights) of a tiny ViT CLIP."""
    import open_clip

    directory = tmp_path_factory.mktemp("openclip")
    (directory / "open_clip_config.json").write_text(json.dumps(OPEN_CLIP_CFG))
    torch.manual_seed(0)
    model = open_clip.create_model(f"local-dir:{directory}")  # no weights yet: random init
    torch.save(model.state_dict(), directory / "open_clip_pytorch_model.bin")
    return directory


@pytest.fixture
def cache(tmp_path: Path) -> TextEmbeddingCache:
    return TextEmbeddingCache(tmp_path / "text_cache")


def make_scorer(
    family: str, tokenizer, open_clip_dir: Path, cache: TextEmbeddingCache, **kwargs
) -> DualEncoderScorer:
    if family == "openclip":
        import open_clip

        name = f"local-dir:{open_clip_dir}"
        model, tok = open_clip.create_model(name, require_pretrained=True), open_clip.get_tokenizer(name)
        return DualEncoderScorer(model, tok, "openclip", text_cache=cache, **kwargs)
    return DualEncoderScorer(build_hf(family), tokenizer, family, text_cache=cache, **kwargs)


def images(batch: int = 2, height: int = 50, width: int = 70) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(batch, 3, height, width)


def flat(rows):
    return [text for row in rows for text in row]


# -- reference embeddings from each model's own forward ------------------------------------------


@torch.no_grad()
def reference(scorer: DualEncoderScorer, pixels: torch.Tensor, texts: list[str]) -> dict[str, torch.Tensor]:
    """Unit image / text embeddings, the model's own i2t logits and its scale, from its forward."""
    model, family = scorer.model, scorer.family
    tokens = scorer.tokenize(texts)
    if family == "openclip":
        image, text, scale = model(image=pixels, text=tokens["text"])[:3]
        return dict(image=image, text=text, logits=scale * image @ text.T, scale=scale)
    if family == "blip":
        out = model(pixel_values=pixels, use_itm_head=False, **tokens)
        image = F.normalize(model.vision_proj(out.last_hidden_state[:, 0]), dim=-1)
        text = F.normalize(model.text_proj(out.question_embeds[:, 0]), dim=-1)
        scale = torch.tensor(model.config.logit_scale_init_value).exp()
        return dict(image=image, text=text, logits=scale * out.itm_score, scale=scale)
    if family == "flava":  # FlavaForPreTraining's contrastive head: CLS states through the projections
        out = model(pixel_values=pixels, skip_multimodal_encoder=True, **tokens)
        image = F.normalize(model.image_projection(out.image_embeddings[:, 0]), dim=-1)
        text = F.normalize(model.text_projection(out.text_embeddings[:, 0]), dim=-1)
        scale = model.logit_scale.exp()
        return dict(image=image, text=text, logits=scale * image @ text.T, scale=scale)
    out = model(pixel_values=pixels, **tokens)
    logits = out.logits_per_image
    if family == "siglip":
        logits = logits - model.logit_bias
        scale = model.logit_scale.exp()
    elif family == "align":
        scale = 1 / model.temperature
    else:
        scale = model.logit_scale.exp()
    return dict(image=out.image_embeds, text=out.text_embeds, logits=logits, scale=scale)


# -- the contract, per architecture ---------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_are_scaled_cosines_of_the_models_own_embeddings(family, tokenizer, open_clip_dir, cache):
    scorer = make_scorer(family, tokenizer, open_clip_dir, cache)
    x = images()
    n = len(CANDIDATES[0])
    ref = reference(scorer, scorer.preprocess(x), flat(CANDIDATES) + CONTEXTS)
    cand = ref["text"][: 2 * n].view(2, n, -1)
    ctx = ref["text"][2 * n :]

    got = {}
    for task in TASKS:
        scorer.task = task
        got[task] = scorer(x, CONTEXTS, CANDIDATES)
        assert got[task].shape == (2, n)
        assert not got[task].requires_grad
    i2t_expected = torch.stack([ref["logits"][b, b * n : (b + 1) * n] for b in range(2)])
    fused = F.normalize(ref["image"] + ctx, dim=-1)  # paper 000 IT2T: element-wise addition
    it2t_expected = ref["scale"] * torch.einsum("bd,bnd->bn", fused, cand)
    t2t_expected = ref["scale"] * torch.einsum("bd,bnd->bn", ctx, cand)
    torch.testing.assert_close(got["i2t"], i2t_expected, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(got["it2t"], it2t_expected, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(got["t2t"], t2t_expected, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(scorer.logit_scale, ref["scale"].float())
    assert not torch.allclose(got["i2t"], got["it2t"]) and not torch.allclose(got["it2t"], got["t2t"])
    assert scorer.name.startswith(f"{family}:") and set(scorer.supported_tasks) == set(TASKS)


@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_reach_pixels_of_any_size(family, tokenizer, open_clip_dir, cache):
    scorer = make_scorer(family, tokenizer, open_clip_dir, cache)
    for task, (height, width) in [("i2t", (50, 70)), ("it2t", (20, 33)), ("i2t", (32, 32))]:
        scorer.task = task
        x = images(height=height, width=width).requires_grad_()
        logits = scorer(x, CONTEXTS, CANDIDATES)
        assert logits.shape == (2, 3) and torch.isfinite(logits).all()
        logits[:, 0].sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0, (task, height)
    assert all(not p.requires_grad for p in scorer.model.parameters())


def test_siglip_bias_is_a_constant_shift(tokenizer, open_clip_dir, cache):
    scorer = make_scorer("siglip", tokenizer, open_clip_dir, cache)
    with torch.no_grad():
        scorer.model.logit_bias.fill_(-3.0)
    x = images()
    logits = scorer(x, None, CANDIDATES)
    ref = reference(scorer, scorer.preprocess(x), flat(CANDIDATES))
    torch.testing.assert_close(scorer.logit_bias, torch.tensor([-3.0]))
    torch.testing.assert_close(logits, torch.stack([ref["logits"][b, 3 * b : 3 * b + 3] for b in range(2)]))


def test_unnormalised_fusion_option(tokenizer, open_clip_dir, cache):
    scorer = make_scorer("clip", tokenizer, open_clip_dir, cache, task="it2t", fusion_normalize=False)
    x = images()
    with torch.no_grad():
        img = scorer.encode_images(x)
        ctx = scorer.encode_texts(CONTEXTS)
        cand = F.normalize(scorer.encode_texts(flat(CANDIDATES)).view(2, 3, -1), dim=-1)
        expected = scorer.logit_scale * torch.einsum("bd,bnd->bn", F.normalize(img + ctx, dim=-1), cand)
    torch.testing.assert_close(scorer(x, CONTEXTS, CANDIDATES), expected)


@pytest.mark.parametrize("family", HF_FAMILIES)
def test_save_pretrained_then_load_scorer_by_name(family, tokenizer, open_clip_dir, cache, tmp_path):
    scorer = make_scorer(family, tokenizer, open_clip_dir, cache, task="it2t")
    directory = tmp_path / family
    scorer.save_pretrained(directory)
    name = f"{family}:{directory}"
    loaded = load_scorer(name, task="it2t", text_cache=cache)
    assert isinstance(loaded, DualEncoderScorer) and loaded.name == name
    assert type(loaded.model) is type(scorer.model)
    assert loaded.preprocess.extra_repr() == scorer.preprocess.extra_repr()
    torch.testing.assert_close(loaded.preprocess.mean, scorer.preprocess.mean)
    torch.testing.assert_close(loaded.preprocess.std, scorer.preprocess.std)
    x = images()
    torch.testing.assert_close(loaded(x, CONTEXTS, CANDIDATES), scorer(x, CONTEXTS, CANDIDATES))


def test_open_clip_local_dir_loads_by_name(tokenizer, open_clip_dir, cache):
    scorer = make_scorer("openclip", tokenizer, open_clip_dir, cache)
    loaded = load_scorer(f"openclip:{open_clip_dir}", text_cache=cache)
    assert loaded.name == f"openclip:{open_clip_dir}"
    assert loaded.preprocess.resize_mode == "shortest" and loaded.preprocess.output_size == (32, 32)
    x = images()
    torch.testing.assert_close(loaded(x, None, CANDIDATES), scorer(x, None, CANDIDATES))


@pytest.mark.parametrize(
    "name",
    [
        "clip:openai/clip-vit-base-patch32",
        "siglip:google/siglip-base-patch16-224",
        "openclip:ViT-B-32/laion2b_s34b_b79k",
    ],
)
def test_offline_hub_id_raises_model_unavailable_fast(name, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelUnavailable, match="cannot be loaded"):
        load_scorer(name)
    assert time.monotonic() - start < 15


# -- preprocessing -------------------------------------------------------------------------------


def smooth_image(height: int, width: int) -> np.ndarray:
    """A smooth uint8 RGB image: resampling kernels then differ only at the quantisation level."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    channels = [np.sin(3 * x + 2 * y + k) * 0.4 + 0.5 for k in range(3)]
    return np.clip(np.stack(channels, -1) * 255, 0, 255).round().astype(np.uint8)


@pytest.mark.parametrize(
    "processor, shortest",
    [
        (T.CLIPImageProcessor(size={"shortest_edge": 40}, crop_size=32), True),
        (T.SiglipImageProcessor(size={"height": 36, "width": 36}), False),
        (  # kakaobrain/align-base's settings, scaled down
            T.EfficientNetImageProcessor(
                size={"height": 40, "width": 40},
                crop_size={"height": 32, "width": 32},
                do_center_crop=True,
                resample=2,
                rescale_factor=1 / 127.5,
                rescale_offset=True,
                do_normalize=False,
                include_top=False,
            ),
            False,
        ),
    ],
    ids=["clip", "siglip", "align"],
)
def test_pixel_preprocess_matches_the_saved_image_processor(processor, shortest, tmp_path):
    from transformers.image_processing_base import ImageProcessingMixin

    processor.save_pretrained(tmp_path)
    config, _ = ImageProcessingMixin.get_image_processor_dict(str(tmp_path))
    default = PixelPreprocess(8)
    preprocess = PixelPreprocess.from_processor_config(config, default, int_size_is_shortest_edge=shortest)
    image = smooth_image(61, 83)
    expected = torch.from_numpy(processor(image, return_tensors="np")["pixel_values"])
    got = preprocess(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)
    assert got.shape == expected.shape
    assert (got - expected).abs().mean() < 0.01 and (got - expected).abs().max() < 0.05


def test_pixel_preprocess_modes():
    x = images(1, 40, 60)
    assert PixelPreprocess(20, resize_mode="shortest")(x).shape[-2:] == (20, 30)
    assert PixelPreprocess(20, resize_mode="shortest", crop_size=20)(x).shape[-2:] == (20, 20)
    assert PixelPreprocess((16, 24))(x).shape[-2:] == (16, 24)
    pad = PixelPreprocess(30, resize_mode="longest")
    longest = pad(x)  # 40x60 -> 20x30, zero-padded (black) to 30x30
    assert longest.shape[-2:] == (30, 30)
    black = (-pad.mean / pad.std).view(3, 1)
    torch.testing.assert_close(longest[0, :, 0, :], black.expand(3, 30))
    assert not torch.allclose(longest[0, :, 15, :], black.expand(3, 30))
    with pytest.raises(TypeError):
        PixelPreprocess(20)(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


# -- the text cache ------------------------------------------------------------------------------


def test_warm_run_never_calls_the_text_encoder(tokenizer, open_clip_dir, tmp_path):
    calls = []
    directory = tmp_path / "cache"
    cold = make_scorer("clip", tokenizer, open_clip_dir, TextEmbeddingCache(directory), task="it2t")
    cold.model.text_model.register_forward_hook(lambda *_: calls.append(1))
    x = images()
    first = cold(x, CONTEXTS, CANDIDATES)
    assert len(calls) >= 1

    calls.clear()  # a new process: same weights, an empty memory cache, the same directory
    warm = DualEncoderScorer(
        cold.model, tokenizer, "clip", task="it2t", text_cache=TextEmbeddingCache(directory)
    )
    assert warm.text_fingerprint == cold.text_fingerprint
    torch.testing.assert_close(warm(x, CONTEXTS, CANDIDATES), first, rtol=0, atol=0)
    warm.task = "t2t"
    warm(None, CONTEXTS, CANDIDATES)
    assert calls == []
    stored = TextEmbeddingCache(directory).get_many(warm.text_fingerprint, CONTEXTS)
    fresh = warm.embed_texts(CONTEXTS)
    np.testing.assert_allclose(np.stack([stored[t] for t in CONTEXTS]), fresh, rtol=1e-6, atol=1e-6)


def test_text_fingerprint_tracks_weights_and_tokenizer(tokenizer, open_clip_dir, cache):
    a = make_scorer("clip", tokenizer, open_clip_dir, cache)
    b = DualEncoderScorer(T.CLIPModel(a.model.config), tokenizer, "clip", name=a.name, text_cache=cache)
    assert a.text_fingerprint.startswith(a.name + "@")
    assert a.text_fingerprint != b.text_fingerprint
    assert (
        a.text_fingerprint == DualEncoderScorer(a.model, tokenizer, "clip", text_cache=cache).text_fingerprint
    )
    cased = copy.deepcopy(tokenizer)  # same vocabulary, no lower-casing: other ids for the probe
    cased.backend_tokenizer.normalizer = BertNormalizer(lowercase=False)
    c = DualEncoderScorer(a.model, cased, "clip", text_cache=cache)
    assert c.text_fingerprint != a.text_fingerprint


def test_text_cache_stores_exact_vectors_per_fingerprint(tmp_path):
    calls: list[list[str]] = []

    def encode(texts: list[str]) -> np.ndarray:
        calls.append(texts)
        return np.array([[len(t), ord(t[0]), 0.1] for t in texts], dtype=np.float32)

    cache = TextEmbeddingCache(tmp_path)
    first = cache.embed("model-a", ["x", "yy", "x"], encode)
    assert calls == [["x", "yy"]] and first.shape == (3, 3)
    np.testing.assert_array_equal(first[0], first[2])
    np.testing.assert_array_equal(cache.embed("model-a", ["yy", "x"], encode), first[[1, 0]])
    assert len(calls) == 1
    cache.embed("model-b", ["x"], encode)  # another model never reads model-a's vectors
    assert calls[-1] == ["x"]
    reopened = TextEmbeddingCache(tmp_path)  # from disk, bit-exact
    np.testing.assert_array_equal(reopened.embed("model-a", ["x", "yy"], encode), first[:2])
    assert len(calls) == 2
    memory_only = TextEmbeddingCache(None)
    memory_only.embed("model-a", ["x"], encode)
    memory_only.embed("model-a", ["x"], encode)
    assert len(calls) == 3


def _encode_numbers(batch: list[str]) -> np.ndarray:
    return np.array([[float(t.split()[1]), 1.0] for t in batch], dtype=np.float32)


def _fill_cache(directory: str, offset: int) -> None:
    cache = TextEmbeddingCache(directory)
    texts = [f"entity {i}" for i in range(300)]
    for start in range(offset, 300, 40):
        out = cache.embed("fp", texts[start : start + 70], _encode_numbers)
        assert (out[:, 0] == np.arange(start, min(start + 70, 300))).all()


def test_text_cache_instance_is_thread_safe(tmp_path):
    cache = TextEmbeddingCache(tmp_path, memory_items=50)  # small LRU: threads also evict
    texts = [f"entity {i}" for i in range(300)]
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            for start in range(offset, 300, 50):
                out = cache.embed("fp", texts[start : start + 80], _encode_numbers)
                assert (out[:, 0] == np.arange(start, min(start + 80, 300))).all()
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k * 7,)) for k in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors


def test_text_cache_is_shared_between_processes(tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("fork")  # children touch only sqlite and numpy
    workers = [context.Process(target=_fill_cache, args=(str(tmp_path), k * 11)) for k in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert [worker.exitcode for worker in workers] == [0, 0, 0, 0]
    texts = [f"entity {i}" for i in range(300)]
    never = TextEmbeddingCache(tmp_path).embed(
        "fp", texts, lambda batch: pytest.fail(f"re-encoded {batch[:3]}")
    )
    assert (never[:, 0] == np.arange(300)).all()


def test_default_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("MEL_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path / "text_embeddings"
    monkeypatch.delenv("MEL_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "melrobust" / "text_embeddings"


# -- the SQLite blob store under both caches (kb.blob_cache) ----------------------------------------


def test_blob_cache_stores_bytes_and_arrays_in_chunks(tmp_path):
    from kb.blob_cache import CHUNK, BlobCache

    store = BlobCache(tmp_path / "b.sqlite", meta={"what": "test"})
    keys = [f"k{i}" for i in range(CHUNK * 2 + 7)]  # more keys than one query may carry
    vectors = {k: np.arange(i, i + 3, dtype=np.float32) for i, k in enumerate(keys)}
    assert store.put_many(vectors, dtype=np.float32) == len(keys)
    found = store.get_many([*keys, "absent", keys[0]], dtype=np.float32)
    assert set(found) == set(keys)
    for key in keys:
        np.testing.assert_array_equal(found[key], vectors[key])
    store.put_many([("raw", b"\x00\x01"), ("k0", np.zeros(3))], dtype=np.float32)
    assert store.get_many(["raw"]) == {"raw": b"\x00\x01"}  # no dtype: the bytes as stored
    np.testing.assert_array_equal(
        store.get_many(["k0"], dtype=np.float32)["k0"], vectors["k0"]
    )  # ignore: first wins
    replacing = BlobCache(tmp_path / "b.sqlite", on_conflict="replace")
    replacing.put_many({"k0": np.zeros(3, dtype=np.float32)})
    np.testing.assert_array_equal(store.get_many(["k0"], dtype=np.float32)["k0"], np.zeros(3))
    assert len(store) == len(keys) + 1
    assert store.connection.execute("SELECT value FROM meta WHERE key = 'what'").fetchone() == ("test",)
    assert store.connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    with pytest.raises(ValueError, match="SQL identifier"):
        BlobCache(tmp_path / "c.sqlite", table="x; DROP TABLE y")


def _write_from_child(store, queue) -> None:
    try:
        store.put_many({"child": np.ones(2, dtype=np.float32)})
        queue.put("ok")
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        queue.put(repr(exc))


def test_blob_cache_is_shared_by_threads_and_forked_children(tmp_path):
    import multiprocessing

    from kb.blob_cache import BlobCache

    store = BlobCache(tmp_path / "b.sqlite")
    store.put_many({"parent": np.zeros(2, dtype=np.float32)})
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_write_from_child, args=(store, queue))  # inherits the open store
    child.start()
    child.join(timeout=60)
    assert (child.exitcode, queue.get(timeout=5)) == (0, "ok")
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            store.put_many({f"t{k}-{i}": np.full(2, i, dtype=np.float32) for i in range(50)})
            assert len(store.get_many([f"t{k}-{i}" for i in range(50)])) == 50
        except BaseException as exc:  # noqa: BLE001 - surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert set(store.get_many(["parent", "child"])) == {"parent", "child"} and len(store) == 202


def test_score_cache_keeps_its_file_table_and_key(tmp_path):
    import hashlib
    import json
    import sqlite3

    from eval.score_cache import ScoreCache, file_digest

    scorer_id = "clip:openai/clip-vit-base-patch32@0123"
    digest = hashlib.sha256(scorer_id.encode()).hexdigest()[:12]
    path = tmp_path / f"clip_openai_clip-vit-base-patch32_0123-{digest}.sqlite"  # the name it always had
    old = sqlite3.connect(path)  # a file as the hand-rolled ScoreCache wrote it
    old.execute("CREATE TABLE scores (key TEXT PRIMARY KEY, logits BLOB)")
    old.execute(
        "INSERT INTO scores VALUES ('before', ?)", (np.array([1.5, -2.0], dtype=np.float32).tobytes(),)
    )
    old.commit()
    old.close()

    cache = ScoreCache(scorer_id, tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.sqlite")) == [path.name]
    np.testing.assert_array_equal(cache.get_many(["before", "absent"])["before"], [1.5, -2.0])
    cache.put_many({"before": np.array([3.0]), "after": np.array([4.0, 5.0])})  # the last write wins
    reopened = ScoreCache(scorer_id, tmp_path)
    found = reopened.get_many(["before", "after"])
    assert found["before"].dtype == np.float32 and found["before"].tolist() == [3.0]
    assert found["after"].tolist() == [4.0, 5.0]
    box = threading.Thread(target=lambda: reopened.get_many(["after"]))  # any thread may use it
    box.start()
    box.join()
    payload = json.dumps(["it2t", "d", [1, 2, 3, 4], "ctx", ["a", "b"]], ensure_ascii=False)
    assert (
        ScoreCache.key("it2t", "d", [1, 2, 3, 4], "ctx", ("a", "b"))
        == hashlib.sha256(payload.encode()).hexdigest()
    )
    (tmp_path / "blob").write_bytes(b"abc")
    assert file_digest(tmp_path / "blob") == hashlib.sha256(b"abc").hexdigest()


def test_text_cache_file_keeps_its_name_and_tables(tmp_path):
    import sqlite3

    from tools.scorers.text_cache import fingerprint_file_name

    cache = TextEmbeddingCache(tmp_path)
    cache.embed("model-a@1234", ["x"], lambda texts: np.ones((len(texts), 2), dtype=np.float32))
    cache.close()
    connection = sqlite3.connect(tmp_path / fingerprint_file_name("model-a@1234"))
    assert connection.execute("SELECT text, vector FROM embeddings").fetchall() == [
        ("x", np.ones(2, dtype=np.float32).tobytes())
    ]
    assert connection.execute("SELECT value FROM meta WHERE key = 'fingerprint'").fetchone() == (
        "model-a@1234",
    )


# -- registry, validation ------------------------------------------------------------------------


def test_candidate_prompt_and_task_table():
    assert candidate_prompt("Barack Obama") == "a photo of Barack Obama"
    rows = family_table.FAMILIES
    assert set(ADAPTERS) <= set(rows)  # every adapter has a family row: its tasks and its factory
    assert all(rows[f].tasks == TASKS and rows[f].factory for f in ADAPTERS)


def test_inputs_are_validated(tokenizer, open_clip_dir, cache):
    scorer = make_scorer("clip", tokenizer, open_clip_dir, cache)
    with pytest.raises(ValueError, match="supports tasks"):
        scorer.task = "v2v"
    with pytest.raises(ValueError, match="same, non-zero length"):
        scorer(images(), None, [["a", "b"], ["c"]])
    with pytest.raises(ValueError, match="needs images"):
        scorer(None, None, CANDIDATES)
    scorer.task = "it2t"
    with pytest.raises(ValueError, match="context texts"):
        scorer(images(), None, CANDIDATES)
    scorer.task = "t2t"
    assert scorer(None, CONTEXTS, CANDIDATES).shape == (2, 3)
    scorer.train()
    assert not scorer.model.training


def test_registry_dispatches_on_prefix(monkeypatch):
    monkeypatch.setattr(family_table, "FAMILIES", dict(family_table.FAMILIES))  # registration stays here
    seen = {}

    class Dummy(Scorer):
        def forward(self, images, texts, candidate_texts):
            return torch.zeros(len(candidate_texts), len(candidate_texts[0]))

    def factory(name, **kwargs):
        seen.update(name=name, **kwargs)
        return Dummy(name, "clip", kwargs.get("task", "i2t"))

    register_scorer("dummy", factory)
    with pytest.raises(ValueError, match="already registered"):
        register_scorer("dummy", factory)
    assert load_scorer("dummy:x/y", task="t2t").task == "t2t" and seen == {"name": "dummy:x/y", "task": "t2t"}
    with pytest.raises(ValueError, match="unknown scorer"):
        load_scorer("nosuch:model")
    with pytest.raises(ValueError, match="expected <prefix>"):
        load_scorer("openai/clip-vit-base-patch32")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_runs_on_gpu(tokenizer, open_clip_dir, cache):
    scorer = make_scorer("clip", tokenizer, open_clip_dir, cache, task="it2t").to("cuda")
    x = images().cuda().requires_grad_()
    scorer(x, CONTEXTS, CANDIDATES)[:, 0].sum().backward()
    assert x.grad.abs().sum() > 0
