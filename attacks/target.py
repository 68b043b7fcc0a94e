"""The module an attack sees: a scorer with each row's texts fixed, ``model(images) -> (B, n)``.

torchattacks calls ``model(images)`` with images alone; MEL scorers also need the mention
context (it2t) and the candidate texts. ``CandidateTarget`` binds those per row, so row ``b``
of the logits is the scorer's score of image ``b`` against candidate list ``b``, and the
attack's label is the gold's index in that list (cross-entropy / CW margin over candidates).
Images stay in [0, 1]: the scorer preprocesses inside ``forward``, so eps is in pixel space.

Mixed sizes. ``images`` may be a list of (3, H, W) tensors of different sizes. When the scorer
has a per-image preprocessing hook (``Scorer.pixel_preprocess``: one ``PixelPreprocess`` with a
fixed output size), each image is resized and cropped on its own, exactly as the scorer would
do to it alone, the results are stacked and the scorer runs one forward (and the attack one
backward) on the stack. Without the hook (a preprocessing whose output size follows the aspect,
or the tagger's OCR reading raw pixels) the rows are scored in groups of one size.

Batch invariance. BLAS libraries take another code path for a single row (MKL's gemv instead of
gemm), which moves a row's logits in the last bits, and PGD's ``sign`` turns such bits into whole
steps. ``min_rows`` pads the stacked model input with zero rows up to that many rows (their
logits are dropped, they get no gradient), so a row computes the same alone as in any batch of
up to ``min_rows`` rows, on CPU at 2 (measured: MKL's gemm gives a row the same bits for any row
count >= 2; convolutions do for any count). On CUDA, cuBLAS and cuDNN choose kernels by shape,
so the engine pads to the batch size there (see ``attacks.engine.pad_rows``).

``dtype`` (float16 / bfloat16) runs the scorer under ``torch.autocast``; the returned logits are
float32 and everything outside the scorer (pixels, eps, projection) stays float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

from tools.scorers.base import Scorer

Images = torch.Tensor | Sequence[torch.Tensor]
"""A (B, 3, H, W) tensor or B (3, H, W) tensors of any sizes."""


class CandidateTarget(torch.nn.Module):
    """``scorer`` with fixed ``texts`` (or None) and ``candidate_texts`` per row.

    ``resized``: the images are already the scorer's input size (``--space model-input``); only
    normalisation happens inside. ``min_rows`` and ``dtype``: see the module docstring.
    """

    def __init__(
        self,
        scorer: Scorer,
        texts: Sequence[str] | None,
        candidate_texts: Sequence[Sequence[str]],
        *,
        resized: bool = False,
        min_rows: int = 1,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.scorer = scorer
        self.texts = list(texts) if texts is not None else None
        self.candidate_texts = [list(row) for row in candidate_texts]
        self.resized = resized
        self.min_rows = max(1, int(min_rows))
        self.dtype = dtype
        if self.texts is not None and len(self.texts) != len(self.candidate_texts):
            raise ValueError(f"{len(self.texts)} texts for {len(self.candidate_texts)} candidate rows")
        self.preprocess = scorer.pixel_preprocess() if hasattr(scorer, "pixel_preprocess") else None
        if resized and self.preprocess is None:
            raise ValueError(f"{getattr(scorer, 'name', scorer)!r} has no fixed input size to attack in")

    @property
    def n_classes(self) -> int:
        return len(self.candidate_texts[0])

    def __len__(self) -> int:
        return len(self.candidate_texts)

    def subset(self, rows: Sequence[int], dtype: torch.dtype | None = None) -> CandidateTarget:
        """The same scorer bound to a subset of the rows (e.g. the ones still to attack)."""
        rows = list(rows)
        texts = [self.texts[i] for i in rows] if self.texts is not None else None
        sub = CandidateTarget(
            self.scorer,
            texts,
            [self.candidate_texts[i] for i in rows],
            resized=self.resized,
            min_rows=self.min_rows,
            dtype=self.dtype if dtype is None else dtype,
        )
        return sub.train(self.training)  # a fresh Module is in training mode: torchattacks would
        # "recover" that by calling .train() on the scorer after the attack

    def forward(self, images: Images) -> torch.Tensor:
        rows = list(images.unbind(0)) if isinstance(images, torch.Tensor) else list(images)
        if len(rows) != len(self.candidate_texts):
            raise ValueError(f"{len(rows)} images for {len(self.candidate_texts)} bound rows")
        if self.preprocess is not None:
            stacked = self.model_inputs(rows)
            with self.preprocess.inputs_resized():
                return self.score(stacked, list(range(len(rows))))
        logits: list[torch.Tensor | None] = [None] * len(rows)
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(rows):
            groups.setdefault(tuple(image.shape), []).append(index)
        for indices in groups.values():  # no hook: one forward per size, each its own preprocessing
            group = self.score(torch.stack([rows[i] for i in indices]), indices)
            for index, row in zip(indices, group, strict=True):
                logits[index] = row
        return torch.stack(logits)  # type: ignore[arg-type]

    def model_inputs(self, rows: list[torch.Tensor]) -> torch.Tensor:
        """Each image resized and cropped on its own (unless already), stacked: (B, 3, h, w)."""
        if self.resized:
            return torch.stack(rows)
        assert self.preprocess is not None
        return torch.cat([self.preprocess.resize_crop(image.unsqueeze(0)) for image in rows])

    def score(self, stacked: torch.Tensor, indices: list[int]) -> torch.Tensor:
        """Logits (len(indices), n) float32 of the bound rows ``indices``, padded to ``min_rows``."""
        count = len(indices)
        texts = [self.texts[i] for i in indices] if self.texts is not None else None
        candidates = [self.candidate_texts[i] for i in indices]
        if count < self.min_rows:
            pad = self.min_rows - count
            stacked = torch.cat([stacked, stacked.new_zeros((pad, *stacked.shape[1:]))])
            texts = texts + [texts[0]] * pad if texts is not None else None
            candidates = candidates + [candidates[0]] * pad
        with self.autocast(stacked.device):
            logits = self.scorer(stacked, texts, candidates)
        return logits[:count].float()

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[None]:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)
