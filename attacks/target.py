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
steps. So the model is called on chunks of ``rows_per_call`` rows (None: all rows at once), each
padded with zero rows up to ``min_rows`` (their logits are dropped, they get no gradient): a row
then computes the same bits alone as in any batch. On CPU the engine calls the model row by row
(``rows_per_call=1``: a CPU gains nothing from stacking, measured, and a lone image costs no
padding); on CUDA it stacks the whole batch and pads to the batch size, one shape and so one
cuBLAS/cuDNN kernel choice per run (``attacks.engine.model_calls``). The tests check that stacked
setting on CPU too: a row alone padded to the batch size has the same bits as in the batch. Fewer
padding rows are not enough everywhere: on Intel MKL a row agreed for any row count >= 2, but on
an AMD EPYC (AVX-512) a 2-row call moved logits by up to 1.9e-5 against calls of >= 4 rows.

``dtype`` (float16 / bfloat16) runs the scorer under ``torch.autocast``; the returned logits are
float32 and everything outside the scorer (pixels, eps, projection) stays float32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

from attacks.window import Window, support
from tools.scorers.base import Scorer

Images = torch.Tensor | Sequence[torch.Tensor]
"""A (B, 3, H, W) tensor or B (3, H, W) tensors of any sizes."""


class CandidateTarget(torch.nn.Module):
    """``scorer`` with fixed ``texts`` (or None) and ``candidate_texts`` per row.

    ``resized``: the images are already the scorer's input size (``--space model-input``); only
    normalisation happens inside. ``rows_per_call``, ``min_rows``, ``dtype``: see the module doc.
    """

    def __init__(
        self,
        scorer: Scorer,
        texts: Sequence[str] | None,
        candidate_texts: Sequence[Sequence[str]],
        *,
        resized: bool = False,
        rows_per_call: int | None = None,
        min_rows: int = 1,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.scorer = scorer
        self.texts = list(texts) if texts is not None else None
        self.candidate_texts = [list(row) for row in candidate_texts]
        self.resized = resized
        self.rows_per_call = rows_per_call
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
            rows_per_call=self.rows_per_call,
            min_rows=self.min_rows,
            dtype=self.dtype if dtype is None else dtype,
        )
        return sub.train(self.training)  # a fresh Module is in training mode: torchattacks would
        # "recover" that by calling .train() on the scorer after the attack

    def windows(self, images: Images) -> list[Window]:
        """Per image the rows and columns the scorer sees (``attacks.window``; all when resized)."""
        preprocess = None if self.resized else self.preprocess
        return [support(preprocess, int(x.shape[-2]), int(x.shape[-1])) for x in images]

    def forward(self, images: Images) -> torch.Tensor:
        rows = list(images.unbind(0)) if isinstance(images, torch.Tensor) else list(images)
        if len(rows) != len(self.candidate_texts):
            raise ValueError(f"{len(rows)} images for {len(self.candidate_texts)} bound rows")
        if self.preprocess is not None:  # each image resized on its own, then stacked
            inputs = [
                x.unsqueeze(0) if self.resized else self.preprocess.resize_crop(x.unsqueeze(0)) for x in rows
            ]
            with self.preprocess.inputs_resized():
                return torch.cat(self.score(inputs, list(range(len(rows)))))
        logits: list[torch.Tensor | None] = [None] * len(rows)
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(rows):
            groups.setdefault(tuple(image.shape), []).append(index)
        for indices in groups.values():  # no hook: calls of one size, each its own preprocessing
            scored = torch.cat(self.score([rows[i].unsqueeze(0) for i in indices], indices))
            for index, row in zip(indices, scored, strict=True):
                logits[index] = row
        return torch.stack(logits)  # type: ignore[arg-type]

    def score(self, inputs: list[torch.Tensor], indices: list[int]) -> list[torch.Tensor]:
        """Logits (k, n) float32 per call of ``rows_per_call`` (1, 3, h, w) inputs, padded to ``min_rows``."""
        size = self.rows_per_call or len(inputs)
        out = []
        for start in range(0, len(inputs), size):
            chunk, rows = inputs[start : start + size], indices[start : start + size]
            stacked = torch.cat(chunk) if len(chunk) > 1 else chunk[0]
            texts = [self.texts[i] for i in rows] if self.texts is not None else None
            candidates = [self.candidate_texts[i] for i in rows]
            if len(rows) < self.min_rows:
                pad = self.min_rows - len(rows)
                stacked = torch.cat([stacked, stacked.new_zeros((pad, *stacked.shape[1:]))])
                texts = texts + [texts[0]] * pad if texts is not None else None
                candidates = candidates + [candidates[0]] * pad
            with self.autocast(stacked.device):
                logits = self.scorer(stacked, texts, candidates)
            out.append(logits[: len(rows)].float())
        return out

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[None]:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)
