"""PGD (Madry et al.) per image: ``torchattacks.PGD``'s algorithm on a list of mixed-size images.

The same steps as torchattacks 3.3.0's ``PGD.forward`` (uniform random start in the eps ball,
``alpha * sign(grad)`` of the cross-entropy, projection onto the ball and [0, 1]), changed only
where the stock code ties an image to its batch or costs needless full-resolution passes:

* the random start of image ``b`` comes from its own generator (``attacks.seeding``), not from
  torch's global one, so it is the same alone or in any batch;
* the loss is the *summed* cross-entropy: the stock mean divides every gradient by the batch
  size, which changes a gradient's bits (and so, through ``sign``, whole steps) with the batch;
* the update is in place, ``x = clamp(x + alpha * sign(g), lo, hi)`` with the bounds
  ``lo = max(x0 - eps, 0)``, ``hi = min(x0 + eps, 1)`` computed once: the stock
  ``clamp(x0 + clamp(x - x0, -eps, eps), 0, 1)`` is the same set but allocates five
  full-resolution temporaries a step (a 8-megapixel photo: 1.0 s of a 0.83 s forward-backward
  on one core, against 0.07 s in place);
* only the window the scorer sees is updated (``attacks.window``): elsewhere the gradient is
  exactly 0 and the update would be ``x + 0``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
import torchattacks

from attacks.seeding import generator
from attacks.window import Window, view


def linf_bounds(
    images: Sequence[torch.Tensor], eps: float, windows: Sequence[Window]
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per image the box the Linf attack stays in, over its window: [max(x - eps, 0), min(x + eps, 1)]."""
    return [
        ((view(x, w) - eps).clamp_(0, 1), (view(x, w) + eps).clamp_(0, 1))
        for x, w in zip(images, windows, strict=True)
    ]


def attack_windows(model: torch.nn.Module, images: Sequence[torch.Tensor]) -> list[Window]:
    """The target's support windows (``attacks.window``), or whole images for a bare model."""
    if hasattr(model, "windows"):
        return model.windows(images)
    return [(0, int(x.shape[-2]), 0, int(x.shape[-1])) for x in images]


def grad_norms(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of each image's gradient (the blind-attack check, ``attacks.checks``; the
    fastest full-resolution reduction on CPU: 22 ms on 8 megapixels against 58 for sum |g|)."""
    return torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads]).cpu()


class RowPGD(torchattacks.PGD):
    """``torchattacks.PGD`` on B images of any sizes, each with its own random start (see module doc)."""

    def forward(  # type: ignore[override]
        self,
        images: Sequence[torch.Tensor],
        labels: torch.Tensor,
        seeds: Sequence[int],
        stats: dict[str, Any] | None = None,
    ) -> list[torch.Tensor]:
        """Adversarials of ``images`` ((3, H, W) each, [0, 1]); ``stats["grad_norm"]``: step 1's |g|."""
        if len(seeds) != len(images):
            raise ValueError(f"{len(seeds)} seeds for {len(images)} images")
        images = [x.detach().to(self.device) for x in images]
        labels = labels.detach().to(self.device)
        windows = attack_windows(self.model, images)
        bounds = linf_bounds(images, self.eps, windows)
        adversarial = []
        for x, seed in zip(images, seeds, strict=True):
            if self.random_start:
                start = torch.empty_like(x).uniform_(-self.eps, self.eps, generator=generator(seed, x.device))
                adversarial.append(start.add_(x).clamp_(0, 1))
            else:
                adversarial.append(x.clone())
        for step in range(self.steps):
            for x in adversarial:
                x.requires_grad_(True)
            logits = self.get_logits(adversarial)
            cost = F.cross_entropy(logits, labels, reduction="sum")
            grads = torch.autograd.grad(cost, adversarial)
            if step == 0 and stats is not None:
                stats["grad_norm"] = grad_norms(grads)
            with torch.no_grad():
                for x, g, (low, high), window in zip(adversarial, grads, bounds, windows, strict=True):
                    x.requires_grad_(False)
                    inside = view(x, window)  # outside it the gradient is 0: nothing would move
                    inside.add_(view(g, window).sign_(), alpha=self.alpha)
                    torch.clamp(inside, min=low, max=high, out=inside)
        return [x.detach() for x in adversarial]
