"""REPA projector h (GenDR Sec. 3.1, Eq. 3, Algorithm 1): an MLP applied at every position of the
UNet's features after its first down block, mapping them to the frozen encoder's (DINOv2's)
feature width. The loss itself is :func:`gendr_core.losses.repa_loss`."""

from __future__ import annotations

from torch import Tensor, nn

from ..errors import ConfigError, ImageInputError

__all__ = ["RepaProjector"]


class RepaProjector(nn.Module):
    """Per-position MLP ``(B,C,h,w) -> (B,D,h,w)``: ``layers`` 1x1 convolutions with SiLU between
    them (REPA's projector is a 3-layer MLP of width 2048 with SiLU; GenDR only says "MLP", so we
    keep REPA's shape). A 1x1 convolution is the same Linear applied to every token."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 2048, layers: int = 3) -> None:
        super().__init__()
        if min(in_channels, out_channels, hidden) < 1:
            raise ConfigError(f"RepaProjector: channels must be >= 1, got in={in_channels}, out={out_channels}, "
                              f"hidden={hidden}")
        if layers < 1:
            raise ConfigError(f"RepaProjector: layers={layers} must be >= 1")
        widths = [in_channels] + [hidden] * (layers - 1) + [out_channels]
        mods: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            mods.append(nn.Conv2d(a, b, 1))
            if i < layers - 1:
                mods.append(nn.SiLU())
        self.net = nn.Sequential(*mods)
        self.in_channels, self.out_channels = in_channels, out_channels

    def forward(self, h: Tensor) -> Tensor:
        if h.dim() != 4 or h.shape[1] != self.in_channels:
            raise ImageInputError(f"RepaProjector: expected (B,{self.in_channels},h,w) features, got {tuple(h.shape)}")
        return self.net(h.to(self.net[0].weight.dtype))
