"""Training losses, grouped by family.

* :mod:`.pixel` -- L1, per-sample -PSNR (RGB, luma), masked Fourier-space loss (GenDR-Pix Eq. 2).
* :mod:`.adversarial` -- softplus generator/discriminator pair on logit maps.
* :mod:`.perceptual` -- feature matching, DISTS, EA-DISTS (DFOSD Eq. 5-7).
* :mod:`.distill` -- GenDR CiD/CiDA score distillation and REPA (GenDR Eq. 3, 7-11, Algorithms 1-2).
* :mod:`.dfosd` -- DFOSD's spatial loss, MSE + lambda_2 EA-DISTS (DFOSD Eq. 8).

Images are float tensors (B,3,H,W) in [0,1].  Stage II generator objective (GenDR-Pix Eq. 4 /
Algorithm 1)::

    L_psi = l1_loss(x_g, x_r) + 0.05 * generator_adv_loss(D(x_g)) + 1.0 * DISTS(x_g, x_r)
            + 0.1 * masked_fourier_loss(x_g, x_r)

RandPad (GenDR-Pix Eq. 3) lives in ``gendr_core.ops.padding`` and is applied to the discriminator
inputs by the trainer; none of the losses here need it.  Without VGG16 weights the Stage II trainer
uses :func:`feature_matching_loss` on the frozen discriminator backbone's features as L_P.

Every name is re-exported here, so ``from gendr_core.losses import X`` works for all of them.
"""

from __future__ import annotations

from . import distill as _distill
from ._common import Reduction
from .adversarial import Logits, discriminator_adv_loss, generator_adv_loss
from .dfosd import dfosd_spatial_loss
from .distill import (
    CiDAConfig,
    base_repa_loss,
    cid_generator_loss,
    cid_generator_term,
    cid_weight,
    classifier_free_guidance,
    denoising_loss,
    repa_loss,
    score_discriminator_losses,
    score_network_losses,
)
from .perceptual import (
    DISTS,
    DISTS_ALPHA_BETA_PATH,
    EADISTS,
    channel_normalise,
    dists_similarity,
    feature_matching_loss,
    load_dists_alpha_beta,
    sobel_magnitude,
)
from .pixel import artifact_mask, l1_loss, masked_fourier_loss, neg_psnr_loss, neg_psnr_y_loss

__all__ = [
    "l1_loss",
    "neg_psnr_loss",
    "neg_psnr_y_loss",
    "artifact_mask",
    "masked_fourier_loss",
    "generator_adv_loss",
    "discriminator_adv_loss",
    "channel_normalise",
    "feature_matching_loss",
    "dists_similarity",
    "load_dists_alpha_beta",
    "DISTS_ALPHA_BETA_PATH",
    "sobel_magnitude",
    "DISTS",
    "EADISTS",
    "Logits",
    "Reduction",
    *_distill.__all__,  # CiD/CiDA/REPA names, listed once in distill.py
    "dfosd_spatial_loss",
]
