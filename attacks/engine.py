"""Run one preset on one batch of same-sized images, with torchattacks as the engine.

What is taken from torchattacks as is, and what is fixed (read from the 3.3.0 source):

* PGD: ``torchattacks.PGD`` (random start in the eps ball, ``alpha * sign(grad)`` of the
  cross-entropy, projection, clamp to [0, 1]). The random start uses torch's global RNG, so
  the engine seeds it with the run's seed before every batch.
* APGD: ``torchattacks.APGD`` with ``loss="ce"`` (the seed paper maximises cross-entropy).
  Its DLR loss reads the third-largest logit and so needs >= 3 candidates: ``build_attack``
  refuses ``dlr`` with fewer. 3.3.0's APGD has no ``n_classes`` argument (only APGDT does);
  the attribute is set to the candidate count anyway so no code path can assume 10 classes.
  APGD returns the clean image for a sample it does not fool (AutoAttack's convention): the
  manifest shows those with ``linf == 0`` and ``success == False``.
* CW: ``FixedCW`` subclasses ``torchattacks.CW``. The stock f-function takes
  ``max((1 - onehot) * Z)`` as the best other logit, which is 0 whenever all other logits are
  negative, as scaled-cosine logits of CLIP-style models often are (torchattacks issue #184);
  ``FixedCW.f`` is paper eq. 4, ``max(Z_y - max_{i != y} Z_i, -kappa)``, with the other logits
  masked by -inf. Also changed: gradients go to ``w`` only (``autograd.grad``, the scorer's
  parameters get no ``.grad``); the stock early stop compares the *batch's summed* cost, so a
  batch would stop when one image stops, making results depend on batching, and is dropped
  (every image runs all ``steps``, as Table 1 states); ``atanh`` of pixels at exactly 0 or 1
  is infinite (their gradient vanishes for good), so pixels are pulled in by 1e-6 first.
  Like stock CW it returns, per image, the misclassified iterate with the smallest L2, or the
  clean image if none was misclassified.
* Samples the scorer already misclassifies are not attacked at all and come back unchanged
  (APGD and CW do that themselves; the engine applies it to every preset so a released set
  is uniform). They are counted: ``already_misclassified`` in ``BatchResult``.
* ``Attack.save`` casts to uint8 by truncation: never used (``attacks.output.write_png`` rounds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchattacks

from attacks.presets import Preset
from attacks.target import CandidateTarget

CW_PIXEL_MARGIN = 1e-6


class FixedCW(torchattacks.CW):
    """Carlini-Wagner L2 (paper eq. 3-4): Adam on tanh-space ``w``, correct f for any logit sign."""

    def f(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return cw_margin(outputs, labels, self.kappa, targeted=self.targeted)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        images = images.clone().detach().to(self.device)
        labels = labels.clone().detach().to(self.device)
        goal = self.get_target_label(images, labels) if self.targeted else labels
        inner = images.clamp(CW_PIXEL_MARGIN, 1 - CW_PIXEL_MARGIN)
        w = self.inverse_tanh_space(inner).detach().requires_grad_(True)
        best_adv = images.clone()
        best_l2 = torch.full((len(images),), float("inf"), device=images.device)
        optimizer = torch.optim.Adam([w], lr=self.lr)
        shape = (-1,) + (1,) * (images.ndim - 1)
        for _ in range(self.steps):
            adv = self.tanh_space(w)
            l2 = (adv - images).flatten(1).pow(2).sum(dim=1)
            outputs = self.get_logits(adv)
            cost = l2.sum() + self.c * self.f(outputs, goal).sum()
            optimizer.zero_grad()
            (w.grad,) = torch.autograd.grad(cost, [w])
            optimizer.step()
            with torch.no_grad():
                pred = outputs.argmax(dim=1)
                fooled = (pred == goal) if self.targeted else (pred != labels)
                better = fooled & (l2 < best_l2)
                best_l2 = torch.where(better, l2, best_l2)
                best_adv = torch.where(better.view(shape), adv.detach(), best_adv)
        return best_adv


def cw_margin(
    outputs: torch.Tensor, labels: torch.Tensor, kappa: float, targeted: bool = False
) -> torch.Tensor:
    """Paper eq. 4 per row: ``max(Z_y - max_{i != y} Z_i, -kappa)`` (targeted: other minus target)."""
    gold = outputs.gather(1, labels.view(-1, 1)).squeeze(1)
    others = outputs.masked_fill(F.one_hot(labels, outputs.shape[1]).bool(), float("-inf"))
    best_other = others.max(dim=1).values
    margin = best_other - gold if targeted else gold - best_other
    return margin.clamp(min=-kappa)


def build_attack(
    preset: Preset, target: CandidateTarget, seed: int = 0, loss: str = "ce"
) -> torchattacks.Attack:
    """The torchattacks object for ``preset`` on ``target`` (images in [0, 1], no normalisation)."""
    if preset.method == "pgd":
        return torchattacks.PGD(
            target, eps=preset.eps, alpha=preset.alpha, steps=preset.steps, random_start=True
        )
    if preset.method == "apgd":
        if loss == "dlr" and target.n_classes < 3:
            raise ValueError(f"APGD's DLR loss needs >= 3 candidates, got {target.n_classes}")
        attack = torchattacks.APGD(
            target, norm="Linf", eps=preset.eps, steps=preset.steps, seed=seed, loss=loss
        )
        attack.n_classes = target.n_classes
        return attack
    return FixedCW(target, c=preset.c, kappa=preset.kappa, steps=preset.steps, lr=preset.lr)


@dataclass
class BatchResult:
    """Everything the engine knows about one attacked batch (row order = input order)."""

    adversarial: torch.Tensor  # (B, 3, H, W) float in [0, 1]
    clean_pred: torch.Tensor  # (B,) candidate index
    adv_pred: torch.Tensor  # (B,) on the float adversarial
    png_pred: torch.Tensor  # (B,) after 8-bit rounding
    already_misclassified: torch.Tensor  # (B,) bool
    clean_grad_abs: torch.Tensor  # (B,) sum |d CE / d pixel| on the clean input
    clean_loss: torch.Tensor  # (B,) CE on clean
    adv_loss: torch.Tensor  # (B,) CE on the float adversarial
    eval_mode: bool
    seconds: float


def quantize(images: torch.Tensor) -> torch.Tensor:
    """What an 8-bit PNG stores: ``round(x * 255) / 255`` (round half to even, never truncation)."""
    return torch.round(images.clamp(0, 1) * 255) / 255


def attack_batch(
    scorer: torch.nn.Module,
    preset: Preset,
    images: torch.Tensor,
    labels: torch.Tensor,
    candidate_texts: Sequence[Sequence[str]],
    texts: Sequence[str] | None = None,
    seed: int = 0,
) -> BatchResult:
    """Attack a (B, 3, H, W) batch as one tensor; rows the scorer already gets wrong are left alone."""
    import time

    started = time.perf_counter()
    scorer.eval()
    target = CandidateTarget(scorer, texts, candidate_texts).eval()
    images = images.detach().to(next(scorer.parameters()).device)
    labels = labels.to(images.device)
    probe = images.clone().requires_grad_(True)
    logits = target(probe)
    clean_loss = F.cross_entropy(logits, labels, reduction="none")
    (grad,) = torch.autograd.grad(clean_loss.sum(), [probe])
    clean_pred = logits.detach().argmax(dim=1)
    already = clean_pred != labels
    adversarial = images.clone()
    todo = (~already).nonzero().flatten().tolist()
    if todo:
        sub = target if len(todo) == len(images) else target.subset(todo)
        attack = build_attack(preset, sub, seed)
        torch.manual_seed(seed)
        adversarial[todo] = attack(images[todo], labels[todo]).detach()
    eval_mode = not any(m.training for m in scorer.modules())
    scorer.eval()  # the check above records a failure; re-scoring must not update batch-norm stats
    with torch.no_grad():
        adv_logits = target(adversarial)
        png_logits = target(quantize(adversarial))
    return BatchResult(
        adversarial=adversarial,
        clean_pred=clean_pred.cpu(),
        adv_pred=adv_logits.argmax(dim=1).cpu(),
        png_pred=png_logits.argmax(dim=1).cpu(),
        already_misclassified=already.cpu(),
        clean_grad_abs=grad.abs().flatten(1).sum(dim=1).cpu(),
        clean_loss=clean_loss.detach().cpu(),
        adv_loss=F.cross_entropy(adv_logits, labels, reduction="none").cpu(),
        eval_mode=eval_mode,
        seconds=time.perf_counter() - started,
    )
