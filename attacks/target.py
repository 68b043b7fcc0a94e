"""The module an attack sees: a scorer with each row's texts fixed, ``model(images) -> (B, n)``.

torchattacks calls ``model(images)`` with images alone; MEL scorers also need the mention
context (it2t) and the candidate texts. ``CandidateTarget`` binds those per row, so row ``b``
of the logits is the scorer's score of image ``b`` against candidate list ``b``, and the
attack's label is the gold's index in that list (cross-entropy / CW margin over candidates).
Images stay in [0, 1]: the scorer preprocesses inside ``forward``, so eps is in pixel space.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tools.scorers.base import Scorer


class CandidateTarget(torch.nn.Module):
    """``scorer`` with fixed ``texts`` (or None) and ``candidate_texts`` per row."""

    def __init__(
        self,
        scorer: Scorer,
        texts: Sequence[str] | None,
        candidate_texts: Sequence[Sequence[str]],
    ) -> None:
        super().__init__()
        self.scorer = scorer
        self.texts = list(texts) if texts is not None else None
        self.candidate_texts = [list(row) for row in candidate_texts]
        if self.texts is not None and len(self.texts) != len(self.candidate_texts):
            raise ValueError(f"{len(self.texts)} texts for {len(self.candidate_texts)} candidate rows")

    @property
    def n_classes(self) -> int:
        return len(self.candidate_texts[0])

    def __len__(self) -> int:
        return len(self.candidate_texts)

    def subset(self, rows: Sequence[int]) -> CandidateTarget:
        """The same scorer bound to a subset of the rows (e.g. the ones still to attack)."""
        rows = list(rows)
        texts = [self.texts[i] for i in rows] if self.texts is not None else None
        sub = CandidateTarget(self.scorer, texts, [self.candidate_texts[i] for i in rows])
        return sub.train(self.training)  # a fresh Module is in training mode: torchattacks would
        # "recover" that by calling .train() on the scorer after the attack

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[0] != len(self.candidate_texts):
            raise ValueError(f"{images.shape[0]} images for {len(self.candidate_texts)} bound rows")
        return self.scorer(images, self.texts, self.candidate_texts)
