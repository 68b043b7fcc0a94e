"""APGD (Croce & Hein 2020, Linf, cross-entropy or DLR) per image, on a list of mixed-size images.

A port of torchattacks 3.3.0's ``APGD.perturb`` / ``attack_single_run`` (itself AutoAttack's
``apgd-ce``), step for step: random start ``x + eps * t / max|t|`` with ``t ~ U(-1, 1)``, step
size ``2 * eps`` halved per image at the checkpoints ``steps_2, steps_2 + ...`` when the loss
oscillates or stalls (``check_oscillation``, inherited), momentum 0.75 after the first step, and
the returned image is the last misclassified iterate, or the clean image when none was (the
AutoAttack convention). Every quantity was already per image in the stock code except:

* the random start: ``perturb`` re-seeds torch's global generator with ``seed`` for the whole
  batch, so row ``b``'s start depended on its batch; here each image has its own generator;
* ``perturb``'s clean forward (to skip misclassified rows): the engine only passes images the
  scorer gets right, so it is not repeated;
* full-resolution copies: the stock code clones the iterate into ``x_best`` / ``x_best_adv``
  and the gradient into ``grad_best`` whenever they improve; here iterates are never changed in
  place after they are made, so keeping one is keeping a reference. Only ``sign(grad)`` is ever
  used (Linf), so the signed gradient is what is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchattacks

from attacks.pgd import attack_windows, grad_norms, linf_bounds
from attacks.seeding import generator
from attacks.window import Window, view


class RowAPGD(torchattacks.APGD):
    """``torchattacks.APGD`` (Linf) on B images of any sizes, each with its own random start."""

    def forward(  # type: ignore[override]
        self,
        images: Sequence[torch.Tensor],
        labels: torch.Tensor,
        seeds: Sequence[int],
        stats: dict[str, Any] | None = None,
    ) -> list[torch.Tensor]:
        """Adversarials of ``images`` (all classified right); ``stats["grad_norm"]``: |g| at the start."""
        if self.norm != "Linf":
            raise ValueError("RowAPGD implements the Linf attack only (every APGD preset is Linf)")
        if len(seeds) != len(images):
            raise ValueError(f"{len(seeds)} seeds for {len(images)} images")
        images = [x.detach().to(self.device) for x in images]
        labels = labels.detach().to(self.device)
        generators = [generator(seed, x.device) for x, seed in zip(images, seeds, strict=True)]
        adversarial = list(images)
        fooled = torch.zeros(len(images), dtype=torch.bool)
        for _ in range(self.n_restarts):
            todo = (~fooled).nonzero().flatten().tolist()
            if not todo:
                break
            best_adv, still_right = self.single_run(
                [images[i] for i in todo], labels[todo], [generators[i] for i in todo], stats
            )
            stats = None  # the first restart's start point is the one checked
            for position, index in enumerate(todo):
                if not still_right[position]:
                    fooled[index] = True
                    adversarial[index] = best_adv[position]
        return [x.detach() for x in adversarial]

    def loss_fn(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.loss == "ce":
            return F.cross_entropy(logits, labels, reduction="none")
        if self.loss == "dlr":
            return self.dlr_loss(logits, labels)
        raise ValueError(f"unknown APGD loss {self.loss!r}")

    def gradient(
        self, points: list[torch.Tensor], labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(logits, per-image loss, raw gradients) at ``points``; one forward and one backward."""
        for x in points:
            x.requires_grad_(True)
        with torch.enable_grad():
            logits = self.get_logits(points)
            loss = self.loss_fn(logits, labels)
            grads = list(torch.autograd.grad(loss.sum(), points))
        for x in points:
            x.requires_grad_(False)
        return logits.detach(), loss.detach(), grads

    def single_run(
        self,
        images: list[torch.Tensor],
        labels: torch.Tensor,
        generators: list[torch.Generator],
        stats: dict[str, Any] | None,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """torchattacks' ``attack_single_run`` per image: (best adversarial iterates, still right)."""
        count, eps = len(images), self.eps
        steps_2 = max(int(0.22 * self.steps), 1)
        steps_min, size_decr = max(int(0.06 * self.steps), 1), max(int(0.03 * self.steps), 1)
        windows = attack_windows(self.model, images)
        bounds = linf_bounds(images, eps, windows)
        starts = []
        for x, rng in zip(images, generators, strict=True):
            t = 2 * torch.rand(x.shape, generator=rng, device=x.device) - 1
            low, high = torch.aminmax(t)
            starts.append(t.div_(torch.maximum(-low, high)).mul_(eps).add_(x).clamp_(0.0, 1.0))
        it = Iterates(starts)
        loss_steps = torch.zeros([self.steps, count])
        logits, loss, grads = self.gradient(it.current, labels)
        if stats is not None:
            stats["grad_norm"] = grad_norms(grads)
        signs = [sign_inside(g, w) for g, w in zip(grads, windows, strict=True)]
        grad_best = list(signs)
        acc = logits.argmax(1) == labels
        loss_best = loss.clone()
        step_size = torch.full((count,), float(eps)) * 2.0  # float32, as the stock code keeps it
        counter3, k = 0, steps_2 + 0
        loss_best_last_check = loss_best.clone()
        reduced_last_check = np.ones(count, dtype=bool)
        for i in range(self.steps):
            a = 0.75 if i > 0 else 1.0
            with torch.no_grad():
                for b in range(count):
                    self.step(it, b, signs[b], float(step_size[b]), a, bounds[b], windows[b])
            logits, loss, grads = self.gradient(it.current, labels)
            signs = [sign_inside(g, w) for g, w in zip(grads, windows, strict=True)]
            pred = logits.argmax(1) == labels
            acc = torch.min(acc, pred)
            for b in (~pred).nonzero().flatten().tolist():
                it.keep("best_adv", b)
            loss_steps[i] = loss.cpu()
            for b in (loss > loss_best).nonzero().flatten().tolist():
                it.keep("best", b)
                grad_best[b] = signs[b]
            loss_best = torch.where(loss > loss_best, loss, loss_best)
            counter3 += 1
            if counter3 == k:
                oscillating = self.check_oscillation(loss_steps.numpy(), i, k, None, k3=self.thr_decr)
                no_progress = ~reduced_last_check & (
                    loss_best_last_check.cpu().numpy() >= loss_best.cpu().numpy()
                )
                oscillating = oscillating | no_progress
                reduced_last_check = oscillating.copy()
                loss_best_last_check = loss_best.clone()
                for b in np.flatnonzero(oscillating).tolist():
                    step_size[b] /= 2.0
                    it.restore(b)
                    signs[b] = grad_best[b]
                counter3 = 0
                k = max(k - size_decr, steps_min)
        return it.best_adv, acc.cpu()

    @staticmethod
    def step(
        it: Iterates,
        b: int,
        sign: torch.Tensor,
        step_size: float,
        a: float,
        bounds: tuple[torch.Tensor, torch.Tensor],
        window: Window,
    ) -> None:
        """One update of image ``b`` inside its window: ``z = P(x + step * sign)``, then with
        momentum ``a < 1`` ``P(x + a (z - x) + (1 - a) (x - x_prev))``, into free buffers. Outside
        the window every iterate holds the start (the gradient there is 0), so nothing moves."""
        low, high = bounds
        x = view(it.current[b], window)
        z = it.take(b)
        inside = view(z, window)
        torch.clamp(
            torch.add(x, view(sign, window), alpha=step_size, out=inside), min=low, max=high, out=inside
        )
        if a != 1.0:
            moved = it.take(b)
            target = torch.lerp(x, inside, a, out=view(moved, window))  # x + a (z - x), exact where z == x
            momentum = torch.sub(x, view(it.previous[b], window), out=it.scratch(b, low))
            torch.clamp(target.add_(momentum, alpha=1 - a), min=low, max=high, out=target)
            it.pool[b].append(z)
            z = moved
        it.advance(b, z)


def sign_inside(grad: torch.Tensor, window: Window) -> torch.Tensor:
    """``sign`` of the gradient where it can be non-zero (in place; the rest stays 0)."""
    view(grad, window).sign_()
    return grad


class Iterates:
    """Per image the iterates APGD keeps (current, previous, best loss, last misclassified) as
    references, and a pool of free buffers: no iterate is copied and, after the first steps, none
    is allocated (a fresh 8-megapixel tensor costs about as much again in page faults as filling
    it)."""

    def __init__(self, starts: list[torch.Tensor]) -> None:
        self.current, self.previous = list(starts), list(starts)
        self.best, self.best_adv = list(starts), list(starts)
        self.pool: list[list[torch.Tensor]] = [[] for _ in starts]
        self._scratch: list[torch.Tensor | None] = [None] * len(starts)

    def held(self, b: int, tensor: torch.Tensor) -> bool:
        kept = (self.current[b], self.previous[b], self.best[b], self.best_adv[b], *self.pool[b])
        return any(tensor is other for other in kept)

    def take(self, b: int) -> torch.Tensor:
        """A free buffer of image ``b``; a new one starts as a copy of an iterate, so that it holds
        the start outside the window."""
        return self.pool[b].pop() if self.pool[b] else self.current[b].clone()

    def scratch(self, b: int, like: torch.Tensor) -> torch.Tensor:
        if self._scratch[b] is None:
            self._scratch[b] = torch.empty_like(like)
        return self._scratch[b]  # type: ignore[return-value]

    def release(self, b: int, tensor: torch.Tensor) -> None:
        if not self.held(b, tensor):
            self.pool[b].append(tensor)

    def advance(self, b: int, new: torch.Tensor) -> None:
        dropped, self.previous[b], self.current[b] = self.previous[b], self.current[b], new
        self.release(b, dropped)

    def keep(self, name: str, b: int) -> None:
        """``best`` or ``best_adv`` of image ``b`` := its current iterate."""
        slots = getattr(self, name)
        dropped, slots[b] = slots[b], self.current[b]
        self.release(b, dropped)

    def restore(self, b: int) -> None:
        dropped, self.current[b] = self.current[b], self.best[b]
        self.release(b, dropped)
