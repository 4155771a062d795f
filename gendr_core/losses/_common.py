"""Shared helpers of the loss modules: shape checks and the reduction type."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from ..errors import ImageInputError

Reduction = Literal["mean", "sum", "none"]


def _check_pair(pred: Tensor, target: Tensor, name: str) -> None:
    if pred.shape != target.shape:
        raise ImageInputError(
            f"{name}: pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    if pred.dim() != 4:
        raise ImageInputError(f"{name}: expected (B,C,H,W) tensors, got shape {tuple(pred.shape)}")

