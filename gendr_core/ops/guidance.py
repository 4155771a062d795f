"""PadCFG and the RandPad self-ensemble (GenDR-Pix Sec. 4.2, Eq. 5-7).

A *predictor* is ``predict(x, cond) -> y``: it maps a (B,3,H,W) image whose sides are a
multiple of the model's ``multiple`` to a restored image of the same size; ``cond`` is a
(B or 1, L, D) prompt embedding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .padding import Pad, crop, pad_to_multiple, sample_rand_pad

Predictor = Callable[[Tensor, Tensor], Tensor]
Progress = Callable[[int, int], None]


def run_padded(predict: Predictor, x: Tensor, cond: Tensor, pad: Sequence[int], multiple: int) -> Tensor:
    """One branch of Eq. 6/7: ``crop(G(pad(x, pad) -> multiple), pad)``; output size == x size."""
    xp, total = pad_to_multiple(x, multiple, Pad(*pad))
    return crop(predict(xp, cond), total)


def _expand(cond: Tensor, batch: int) -> Tensor:
    return cond.expand(batch, *cond.shape[1:]) if cond.shape[0] == 1 else cond


def pad_cfg(
    predict: Predictor,
    x: Tensor,
    cond_pos: Tensor,
    cond_neg: Tensor,
    guidance: float,
    *,
    multiple: int,
    pos_pad: Sequence[int] = (4, 4, 4, 4),
    neg_pad: Sequence[int] = (3, 5, 3, 5),
    batched: bool = True,
    progress: Progress | None = None,
) -> Tensor:
    """PadCFG, GenDR-Pix Eq. 7: y = w*G(pad(x,[4,4,4,4]), c+) + (1-w)*G(pad(x,[3,5,3,5]), c-).

    Our reading (tested): each branch is cropped by its *own* pad before the two are
    combined, as Eq. 6's crop does. Fig. 11's pseudocode combines the padded outputs first
    and then crops ``[4:-4, 4:-4]``, which shifts the (3,5,3,5) branch by one pixel; with
    our order an identity predictor returns ``x`` exactly for every ``w``. Fig. 11 also swaps
    the pads of the two branches relative to Eq. 7; we follow the equation (positive branch
    (4,4,4,4)). ``guidance == 1`` runs the positive branch only: the paper's no-CFG mode.
    ``batched`` stacks both branches in one forward pass (faster, needs equal padded sizes and
    prompt embeddings of the same length, else it falls back to sequential); otherwise they run
    one after the other (less memory).
    """
    if guidance == 1.0:
        y = run_padded(predict, x, cond_pos, pos_pad, multiple)
        if progress:
            progress(1, 1)
        return y
    b = x.shape[0]
    xp_pos, pad_p = pad_to_multiple(x, multiple, Pad(*pos_pad))
    xp_neg, pad_n = pad_to_multiple(x, multiple, Pad(*neg_pad))
    if batched and xp_pos.shape == xp_neg.shape and cond_pos.shape[1:] == cond_neg.shape[1:]:
        cond = torch.cat([_expand(cond_pos, b), _expand(cond_neg, b)], dim=0)
        out = predict(torch.cat([xp_pos, xp_neg], dim=0), cond)  # (2B,3,H',W')
        y_pos, y_neg = crop(out[:b], pad_p), crop(out[b:], pad_n)
        if progress:
            progress(2, 2)
    else:
        y_pos = crop(predict(xp_pos, cond_pos), pad_p)
        if progress:
            progress(1, 2)
        y_neg = crop(predict(xp_neg, cond_neg), pad_n)
        if progress:
            progress(2, 2)
    return guidance * y_pos + (1.0 - guidance) * y_neg


def rand_pad_ensemble(
    predict: Predictor,
    x: Tensor,
    cond: Tensor,
    n: int,
    *,
    multiple: int,
    generator: torch.Generator | None = None,
    period: int = 8,
    progress: Progress | None = None,
) -> Tensor:
    """RandPad self-ensemble, GenDR-Pix Eq. 6: mean over n random pads of the cropped outputs.

    Pads are (p, period-p, q, period-q) with p, q uniform in {0..period-1} (Eq. 3).
    """
    if n < 1:
        raise ValueError(f"n={n} must be >= 1")
    acc = torch.zeros_like(x)
    for i in range(n):
        pad = sample_rand_pad(generator, period)
        acc += run_padded(predict, x, cond, pad, multiple)
        if progress:
            progress(i + 1, n)
    return acc / n


ENSEMBLE_SIZES = (1, 2, 4, 8)


def dihedral(x: Tensor, k: int, inverse: bool = False) -> Tensor:
    """Element ``k`` (0..7) of the dihedral group of the square acting on (..., H, W).

    Bit 0 flips W, bit 1 flips H, bit 2 transposes H and W (applied in that order);
    ``inverse`` undoes it, so ``dihedral(dihedral(x, k), k, inverse=True) == x`` exactly.
    """
    if not 0 <= k < 8:
        raise ValueError(f"k={k} must be in 0..7")
    if inverse and k & 4:
        x = x.transpose(-1, -2)
    if k & 1:
        x = x.flip(-1)
    if k & 2:
        x = x.flip(-2)
    if not inverse and k & 4:
        x = x.transpose(-1, -2)
    return x


def dihedral_ensemble(
    restore: Callable[[Tensor], Tensor],
    x: Tensor,
    n: int,
    *,
    progress: Progress | None = None,
) -> Tensor:
    """Geometric self-ensemble: mean over the first ``n`` dihedral transforms T_k of T_k^-1(restore(T_k(x))).

    Not part of the GenDR-Pix paper (its own ensemble is RandPad, Eq. 6); it is the flip /
    transpose averaging common in super-resolution ("EDSR+"). n = 1 is ``restore(x)``; 2 adds
    the horizontal flip, 4 the vertical flips, 8 the transposes. ``restore`` must map an image
    to one of the same size (any pad-to-multiple happens inside it). n passes, one at a time.
    """
    if n not in ENSEMBLE_SIZES:
        raise ValueError(f"ensemble={n} must be one of {ENSEMBLE_SIZES}")
    acc = None
    for k in range(n):
        y = dihedral(restore(dihedral(x, k)), k, inverse=True)
        acc = y if acc is None else acc + y
        if progress:
            progress(k + 1, n)
    return acc / n
