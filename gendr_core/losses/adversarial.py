"""Softplus (non-saturating) adversarial losses of GenDR-Pix Eq. 1/4 and Algorithm 1, on one logit
tensor or a list of logit maps (one per discriminator head)."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from ..errors import ImageInputError



Logits = Tensor | Sequence[Tensor]


def _mean_over_maps(logits: Logits, fn, name: str) -> Tensor:
    """``fn`` applied elementwise, averaged per logit map, then over the maps (one map per
    discriminator head/depth, maps of different sizes weigh the same)."""
    if isinstance(logits, Tensor):
        return fn(logits).mean()
    maps = list(logits)
    if not maps:
        raise ImageInputError(f"{name}: got an empty list of logit maps")
    return sum(fn(m).mean() for m in maps) / len(maps)


def generator_adv_loss(fake_logits: Logits) -> Tensor:
    """Non-saturating generator loss ``mean softplus(-D(fake))`` (GenDR-Pix Eq. 4, the
    ``lambda_1 * sp[-h(x_g)]`` term of Algorithm 1; the discriminator must not be updated by it).

    ``fake_logits``: one logit tensor, or a list of logit maps (one per discriminator head); a list
    gives the mean over heads of each head's mean."""
    return _mean_over_maps(fake_logits, lambda t: F.softplus(-t), "generator_adv_loss")


def discriminator_adv_loss(real_logits: Logits, fake_logits: Logits) -> Tensor:
    """Discriminator loss ``mean softplus(-D(real)) + mean softplus(D(fake))`` (GenDR-Pix Eq. 1/4,
    Algorithm 1 ``L_phi``).  ``fake_logits`` must come from detached generator outputs.  The two
    means are taken separately, so real and fake batches may differ in size/shape.  Lists of logit
    maps (one per head) are averaged over heads as in :func:`generator_adv_loss`."""
    return (_mean_over_maps(real_logits, lambda t: F.softplus(-t), "discriminator_adv_loss")
            + _mean_over_maps(fake_logits, F.softplus, "discriminator_adv_loss"))


