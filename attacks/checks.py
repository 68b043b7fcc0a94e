"""Sanity checks run after every attacked batch (in the spirit of AutoAttack's ``checks.py``).

``batch_checks`` returns, per image, a dict of flags (True = passed, None = not applicable):

* ``eps_float``: the float adversarial is within the preset's Linf ball,
  ``max |x_adv - x| <= eps + 1e-6`` (float32 slack). None for CW (L2, unbounded by design).
* ``eps_png``: the same after 8-bit rounding. Clean pixels are on the k/255 grid (decoded
  from 8-bit files); when ``eps * 255`` is an integer (every Table 1 preset: 8/255 and
  0.2 = 51/255) rounding cannot leave the ball, so the bound is exactly ``eps``; for any
  other eps rounding may add up to half a grey level and the bound is ``eps + 0.5/255``.
* ``range``: every pixel of the float adversarial is in [0, 1].
* ``finite``: no NaN or inf in the adversarial image.
* ``grad_nonzero``: the attack's first gradient w.r.t. the pixels is not all zero (PGD/APGD:
  the cross-entropy at the random start; CW: the margin term at the clean image): a zero
  gradient means the attack is blind (a non-differentiable step in the scorer, a detached
  preprocessing, saturated softmax). None for an image that was not attacked.
* ``eval_mode``: no module of the scorer was in training mode (dropout / batch-norm
  statistics would make the attack and the evaluation see different models).

``failed(flags)`` lists the names that are False; the generator writes them into the
manifest and prints them to stderr.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from attacks.engine import BatchResult, quantize
from attacks.presets import Preset

FLOAT_SLACK = 1e-6


def png_bound(eps: float) -> float:
    """The Linf bound the rounded image must meet (see the module docstring)."""
    on_grid = math.isclose(eps * 255, round(eps * 255), abs_tol=1e-6)
    return eps if on_grid else eps + 0.5 / 255


def perturbation_norms(
    clean: Sequence[torch.Tensor] | torch.Tensor,
    adversarial: Sequence[torch.Tensor] | torch.Tensor,
    quantized: Sequence[torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Per-image Linf and L2 of the float perturbation and of the 8-bit rounded one (images of
    any sizes; ``quantized``: the rounded adversarials when already made). Linf comes from
    ``aminmax`` (one pass; ``vector_norm(inf)`` took 6x longer on 8 megapixels)."""
    rounded = quantized if quantized is not None else [quantize(x) for x in adversarial]
    norms: dict[str, list[float]] = {"linf": [], "l2": [], "linf_png": [], "l2_png": []}
    for x, adv, q in zip(clean, adversarial, rounded, strict=True):
        delta = torch.empty_like(x)
        for suffix, source in (("", adv), ("_png", q)):
            torch.sub(source, x, out=delta)
            low, high = torch.aminmax(delta)
            norms["linf" + suffix].append(max(-float(low), float(high)))
            norms["l2" + suffix].append(float(torch.linalg.vector_norm(delta)))
    return {key: torch.tensor(values, dtype=torch.float64) for key, values in norms.items()}


def batch_checks(
    preset: Preset,
    clean: Sequence[torch.Tensor] | torch.Tensor,
    result: BatchResult,
    norms: dict[str, torch.Tensor] | None = None,
) -> list[dict[str, bool | None]]:
    """One dict of flags per image (see the module docstring)."""
    norms = norms if norms is not None else perturbation_norms(clean, result.adversarial, result.quantized)
    flags = []
    for b, adversarial in enumerate(result.adversarial):
        low, high = torch.aminmax(adversarial.detach())  # nan propagates: one pass for both flags
        finite = bool(torch.isfinite(low) and torch.isfinite(high))
        if preset.eps is not None and preset.norm == "Linf":
            eps_float = bool(norms["linf"][b] <= preset.eps + FLOAT_SLACK)
            eps_png = bool(norms["linf_png"][b] <= png_bound(preset.eps) + FLOAT_SLACK)
        else:
            eps_float = eps_png = None
        grad = float(result.grad_norm[b])
        flags.append(
            {
                "eps_float": eps_float,
                "eps_png": eps_png,
                "range": finite and bool(low >= 0 and high <= 1),
                "finite": finite,
                "grad_nonzero": None if math.isnan(grad) else grad > 0,
                "eval_mode": result.eval_mode,
            }
        )
    return flags


def failed(flags: dict[str, bool | None]) -> list[str]:
    return [name for name, ok in flags.items() if ok is False]


def success_summary(records: list[dict]) -> dict[str, float | int | None]:
    """White-box success on the attacked scorer from manifest records (errors excluded).

    ``success_rate``: share of clean-correct images whose adversarial (float) prediction is
    not the gold (the attack's own success); ``success_rate_png`` the same for the saved PNGs;
    ``error_rate_all``: wrong after the attack over all attacked images, already-wrong included.
    Norm statistics are over the clean-correct (actually attacked) images.
    """
    ok = [r for r in records if not r.get("error")]
    correct = [r for r in ok if not r["already_misclassified"]]

    def rate(items: list[dict], key: str) -> float | None:
        return round(sum(bool(r[key]) for r in items) / len(items), 4) if items else None

    def mean(key: str) -> float | None:  # over attacked (clean-correct) images
        return round(sum(r[key] for r in correct) / len(correct), 6) if correct else None

    return {
        "n": len(ok),
        "n_errors": len(records) - len(ok),
        "n_clean_correct": len(correct),
        "n_already_misclassified": len(ok) - len(correct),
        "success_rate": rate(correct, "success"),
        "success_rate_png": rate(correct, "success_png"),
        "error_rate_all": (
            round(sum(r["already_misclassified"] or r["success"] for r in ok) / len(ok), 4) if ok else None
        ),
        "mean_linf": mean("linf"),
        "max_linf": max((r["linf"] for r in correct), default=None),
        "mean_l2": mean("l2"),
        "mean_linf_png": mean("linf_png"),
        "mean_l2_png": mean("l2_png"),
        "n_check_failures": sum(1 for r in ok if r["checks_failed"]),
    }
