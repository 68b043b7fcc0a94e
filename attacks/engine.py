"""Run one preset on one batch of images of any sizes, with torchattacks as the engine.

The attacks (each module says what it changes from the torchattacks 3.3.0 source and why):

* PGD: ``attacks.pgd.RowPGD`` (``torchattacks.PGD``'s steps, per-image random start, summed CE);
* APGD: ``attacks.apgd.RowAPGD`` with ``loss="ce"`` (the seed paper maximises cross-entropy);
  DLR reads the third-largest logit and so needs >= 3 candidates: ``build_attack`` refuses
  ``dlr`` with fewer. APGD returns the clean image for a sample it does not fool (AutoAttack's
  convention): the manifest shows those with ``linf == 0`` and ``success == False``;
* CW: ``attacks.cw.FixedCW`` (paper eq. 4's margin, no batch-level early stop), always float32.

One batch (``attack_batch``):

1. one no-grad forward on the clean images: the clean prediction and loss. Images the scorer
   already gets wrong are not attacked at all and come back unchanged (APGD and CW do that
   themselves; the engine applies it to every preset so a released set is uniform); they are
   counted: ``already_misclassified``;
2. the attack on the others, every random draw from (seed, mention id) (``attacks.seeding``);
3. one no-grad forward on the float adversarials and one on their 8-bit rounding (``quantize``).

That is ``steps`` forward-backward passes plus three forwards; the blind-attack check
(``grad_nonzero``) reads the attack's first gradient instead of a probe of its own.

``space="model-input"`` resizes and crops each image to the scorer's input outside the attack
(with the scorer's own ``resize_crop``, then rounded to 8 bits, as the PIL pipeline of Cui et
al.'s attack code produces), and the attack perturbs that (3, h, w) image; normalisation stays
inside the scorer. Every image then has the same size. ``dtype`` runs PGD/APGD's scorer passes
under autocast (CW and the clean and re-scoring passes stay float32).
``Attack.save`` casts to uint8 by truncation: never used (``attacks.output.write_png`` rounds).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
import torchattacks

from attacks.apgd import RowAPGD
from attacks.cw import CW_PIXEL_MARGIN, FixedCW, cw_margin  # noqa: F401 - the engine's public names
from attacks.pgd import RowPGD
from attacks.presets import Preset
from attacks.seeding import row_seeds
from attacks.target import CandidateTarget, Images

Space = Literal["pixels", "model-input"]
SPACES: tuple[str, ...] = get_args(Space)
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def attack_dtype(preset: Preset, dtype: str) -> str:
    """The dtype a preset really runs in: CW always float32 (fp16 overflows its tanh-space cost)."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return "float32" if preset.method == "cw" else dtype


def model_calls(device: torch.device | str, batch_size: int) -> dict[str, int | None]:
    """How the target calls the model (see ``attacks.target``), so a row's bits never depend on
    its batch: on CPU one row per call (stacking gains nothing there; a single-row call is the
    same alone or batched); on CUDA the whole batch in one call padded to ``batch_size`` rows
    (cuBLAS and cuDNN pick kernels by shape: one shape, one choice)."""
    if torch.device(device).type == "cuda":
        return {"rows_per_call": None, "min_rows": max(1, batch_size)}
    return {"rows_per_call": 1, "min_rows": 1}


def build_attack(
    preset: Preset, target: CandidateTarget, seed: int = 0, loss: str = "ce"
) -> torchattacks.Attack:
    """The attack object for ``preset`` on ``target`` (images in [0, 1], no normalisation).

    Called as ``attack(images, labels, seeds=..., stats=...)`` with a list of (3, H, W) images.
    ``seed`` is unused by the row attacks (their seeds come per image) and kept for the API.
    """
    if preset.method == "pgd":
        return RowPGD(target, eps=preset.eps, alpha=preset.alpha, steps=preset.steps, random_start=True)
    if preset.method == "apgd":
        if loss == "dlr" and target.n_classes < 3:
            raise ValueError(f"APGD's DLR loss needs >= 3 candidates, got {target.n_classes}")
        attack = RowAPGD(target, norm="Linf", eps=preset.eps, steps=preset.steps, seed=seed, loss=loss)
        attack.n_classes = target.n_classes  # 3.3.0's APGD has no n_classes argument (only APGDT)
        return attack
    return FixedCW(target, c=preset.c, kappa=preset.kappa, steps=preset.steps, lr=preset.lr)


@dataclass
class BatchResult:
    """Everything the engine knows about one attacked batch (row order = input order)."""

    clean: list[torch.Tensor]  # (3, H, W) each: the attacked space's clean images
    adversarial: list[torch.Tensor]  # (3, H, W) each, float in [0, 1]
    quantized: list[torch.Tensor]  # the adversarials rounded to 8 bits (what the PNG holds)
    clean_pred: torch.Tensor  # (B,) candidate index
    adv_pred: torch.Tensor  # (B,) on the float adversarial
    png_pred: torch.Tensor  # (B,) after 8-bit rounding
    already_misclassified: torch.Tensor  # (B,) bool
    grad_norm: torch.Tensor  # (B,) |d loss / d pixel| at the attack's first iterate; nan: not attacked
    clean_loss: torch.Tensor  # (B,) CE on clean
    adv_loss: torch.Tensor  # (B,) CE on the float adversarial
    eval_mode: bool
    seconds: float
    dtype: str = "float32"
    space: str = "pixels"


def quantize(images: torch.Tensor) -> torch.Tensor:
    """What an 8-bit PNG stores: ``round(x * 255) / 255`` (round half to even, never truncation)."""
    return images.clamp(0, 1).mul_(255).round_().div_(255)


def to_model_input(scorer: torch.nn.Module, image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) -> the scorer's (3, h, w) input in [0, 1], on the 8-bit grid (``space="model-input"``)."""
    preprocess = scorer.pixel_preprocess() if hasattr(scorer, "pixel_preprocess") else None
    if preprocess is None:
        name = getattr(scorer, "name", type(scorer).__name__)
        raise ValueError(f"{name} has no fixed-size preprocessing: --space model-input needs one")
    with torch.no_grad():
        return quantize(preprocess.resize_crop(image.unsqueeze(0).float()))[0]


def attack_batch(
    scorer: torch.nn.Module,
    preset: Preset,
    images: Images,
    labels: torch.Tensor,
    candidate_texts: Sequence[Sequence[str]],
    texts: Sequence[str] | None = None,
    seed: int = 0,
    ids: Sequence[str] | None = None,
    *,
    space: str = "pixels",
    dtype: str = "float32",
    rows_per_call: int | None = 1,
    min_rows: int = 1,
) -> BatchResult:
    """Attack B images (a list of (3, H, W) of any sizes, or a (B, 3, H, W) tensor) as one batch.

    ``ids`` name the rows for their random draws (mention ids; default ``row0, row1, ...``);
    rows the scorer already gets wrong are left alone. ``rows_per_call`` / ``min_rows``: how the
    model is called (``model_calls``; the default is the CPU's).
    """
    if space not in SPACES:
        raise ValueError(f"--space must be one of {', '.join(SPACES)}, got {space!r}")
    started = time.perf_counter()
    scorer.eval()
    device = next(scorer.parameters()).device
    rows = [x.detach().to(device) for x in (images.unbind(0) if isinstance(images, torch.Tensor) else images)]
    ids = list(ids) if ids is not None else [f"row{b}" for b in range(len(rows))]
    if len(ids) != len(rows):
        raise ValueError(f"{len(ids)} ids for {len(rows)} images")
    if space == "model-input":
        rows = [to_model_input(scorer, x) for x in rows]
    labels = labels.to(device)
    dtype = attack_dtype(preset, dtype)
    target = CandidateTarget(
        scorer,
        texts,
        candidate_texts,
        resized=space == "model-input",
        rows_per_call=rows_per_call,
        min_rows=min_rows,
    ).eval()
    with torch.no_grad():
        logits = target(rows)
    clean_loss = F.cross_entropy(logits, labels, reduction="none")
    clean_pred = logits.argmax(dim=1)
    already = clean_pred != labels
    adversarial = list(rows)
    grad_norm = torch.full((len(rows),), float("nan"))
    todo = (~already).nonzero().flatten().tolist()
    if todo:
        sub = target.subset(todo, dtype=DTYPES[dtype])
        attack = build_attack(preset, sub, seed)
        stats: dict[str, torch.Tensor] = {}
        found = attack(
            [rows[i] for i in todo], labels[todo], seeds=row_seeds(seed, [ids[i] for i in todo]), stats=stats
        )
        for i, image in zip(todo, found, strict=True):
            adversarial[i] = image.detach()
        grad_norm[todo] = stats["grad_norm"].float()
    eval_mode = not any(m.training for m in scorer.modules())
    scorer.eval()  # the check above records a failure; re-scoring must not update batch-norm stats
    quantized = [quantize(x) for x in adversarial]
    with torch.no_grad():
        adv_logits = target(adversarial)
        png_logits = target(quantized)
    return BatchResult(
        clean=rows,
        adversarial=adversarial,
        quantized=quantized,
        clean_pred=clean_pred.cpu(),
        adv_pred=adv_logits.argmax(dim=1).cpu(),
        png_pred=png_logits.argmax(dim=1).cpu(),
        already_misclassified=already.cpu(),
        grad_norm=grad_norm,
        clean_loss=clean_loss.cpu(),
        adv_loss=F.cross_entropy(adv_logits, labels, reduction="none").cpu(),
        eval_mode=eval_mode,
        seconds=time.perf_counter() - started,
        dtype=dtype,
        space=space,
    )
