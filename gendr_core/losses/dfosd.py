"""DFOSD's generator objective in pixel space, DFOSD Sec. 3.4 Eq. 8.

``L_G,total = L_spatial + lambda_1 L_G`` with ``L_spatial = MSE(x^_H, x_H) + lambda_2 EA-DISTS(x^_H, x_H)``
(Eq. 8) and ``L_G`` the noise-aware discriminator's generator loss (Eq. 2,
:func:`gendr_core.losses.generator_adv_loss` on ``NoiseAwareDiscriminator`` logits). The paper gives no
values for lambda_1, lambda_2; a trainer config must state its own.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ._common import _check_pair


def dfosd_spatial_loss(pred: Tensor, target: Tensor, ea_dists: nn.Module, lambda_ea: float = 1.0) -> dict[str, Tensor]:
    """``L_spatial`` of DFOSD Eq. 8 on decoded images (B,3,H,W) in [0,1].

    ``ea_dists`` is an :class:`~gendr_core.losses.EADISTS` (``DISTS(x, y) + DISTS(S(x), S(y))``, Eq. 5-7).
    Returns ``{"mse": ..., "ea_dists": ..., "spatial": mse + lambda_ea * ea_dists}`` (float32 scalars).
    """
    _check_pair(pred, target, "dfosd_spatial_loss")
    mse = F.mse_loss(pred.float(), target.float())
    ea = ea_dists(pred, target).float()
    return {"mse": mse, "ea_dists": ea, "spatial": mse + lambda_ea * ea}
