"""Discriminators for pixel-space adversarial training."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from ..ops.shuffle import unshuffle


class PixelUnshuffleDiscriminator(nn.Module):
    """Light patch discriminator that reads images the way GenDR-Pix does: x8 unshuffled.

    GenDR-Pix Stage II uses the Stage-I generator G1 (which natively pixel-unshuffles its
    input) as discriminator, with RandPad (Eq. 3) on its inputs so it cannot key on the
    fixed 8x8 phase. Without a G1 we keep the same input interface with a small
    spectral-normalised conv net: (B,3,H,W) in [0,1] -> (B,1,H/f/2^k,W/f/2^k) logits.
    RandPad is applied by the caller (``gendr_core.ops.padding.rand_pad``).
    """

    def __init__(self, shuffle_factor: int = 8, channels: tuple[int, ...] = (64, 128, 256)) -> None:
        super().__init__()
        self.f = shuffle_factor
        c_in = 3 * shuffle_factor**2
        layers: list[nn.Module] = [spectral_norm(nn.Conv2d(c_in, channels[0], 3, padding=1)), nn.LeakyReLU(0.2)]
        for a, b in zip(channels[:-1], channels[1:], strict=True):
            layers += [spectral_norm(nn.Conv2d(a, b, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
        layers += [spectral_norm(nn.Conv2d(channels[-1], channels[-1], 3, padding=1)), nn.LeakyReLU(0.2),
                   nn.Conv2d(channels[-1], 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, y: Tensor) -> Tensor:
        h, w = y.shape[-2:]
        y = y[..., : h - h % self.f, : w - w % self.f]
        return self.net(unshuffle(y * 2 - 1, self.f))  # (B,3,H,W) -> (B,3f^2,H/f,W/f) -> logits
