"""FixMod, the post-fix module of GenDR-Pix (Sec. A.1): "the wavelet color fix and a small
pretrained UNet", trained after the restorer (Tab. 8: +3.15 MUSIQ, +0.02 s; Fig. 14: it "provides
no additional details but alleviates certain artifacts").

    y_fixed = wavelet_color_fix(y + r(y, x_lq), x_lq)

``y`` is the restored image, ``x_lq`` the bicubic LQ on the output grid and ``r`` a small conv
UNet. The order is ours (the paper gives none): the residual comes first, so the colour fix
still has the last word on the low band. ``r`` can only change what the wavelet fix keeps from
``y`` -- its high band: grid artifacts, ringing, aberrations at edges -- and can never bring back
a colour or tone shift, whatever it learned. Its last conv is zero-initialised, so an untrained
FixMod *is* the wavelet color fix, exactly.

The UNet is cheap by construction: a pixel-unshuffle stem (GenDR-Pix's own VAE-free encoder)
takes the 6 input channels to ``6 u^2`` channels at 1/u resolution, there is no normalisation
(an output pixel depends only on the input pixels around it, not on image statistics), and the
decoder adds skips instead of concatenating them. Any image size works: the inputs are
replicate-padded on the right/bottom to ``config.pad_multiple`` and the residual is cropped
back.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import FixModConfig
from ..errors import ImageInputError
from ..ops.color_fix import wavelet_color_fix
from ..ops.padding import crop, pad_to_multiple
from ..ops.shuffle import shuffle, unshuffle


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


class FixMod(nn.Module):
    """``forward(image, reference) -> fixed``: (B,3,H,W) restored image and (B,3,H,W) bicubic LQ
    on the same grid, both in [0, 1], to the fixed image (float32, unclamped)."""

    def __init__(self, config: FixModConfig) -> None:
        super().__init__()
        self.config = config
        c, n, u = config.channels, config.layers_per_level, config.unshuffle
        self.act = nn.SiLU()
        # Encoder level i: an entry conv (the stem at level 0, a stride-2 conv below) + n convs.
        self.entry = nn.ModuleList([_conv(6 * u * u, c[0])] + [_conv(c[i - 1], c[i], 2) for i in range(1, len(c))])
        self.enc = nn.ModuleList([nn.ModuleList([_conv(ci, ci) for _ in range(n)]) for ci in c])
        # Decoder level i < L-1: 1x1 lateral from level i+1, x2 nearest upsample, + skip, n convs.
        self.lateral = nn.ModuleList([nn.Conv2d(c[i + 1], c[i], 1) for i in range(len(c) - 1)])
        self.dec = nn.ModuleList([nn.ModuleList([_conv(c[i], c[i]) for _ in range(n)]) for i in range(len(c) - 1)])
        self.head = _conv(c[0], 3 * u * u)
        nn.init.zeros_(self.head.weight)  # r == 0 before training: FixMod == wavelet color fix
        nn.init.zeros_(self.head.bias)

    @property
    def dtype(self) -> torch.dtype:
        return self.head.weight.dtype

    def residual(self, image: Tensor, reference: Tensor) -> Tensor:
        """r(y, x_lq): (B,3,H,W) x 2 -> (B,3,H,W) float32, for any H, W."""
        _check_pair(image, reference)
        u = self.config.unshuffle
        x = torch.cat([image, reference], 1).to(self.head.weight.device, self.dtype) * 2 - 1  # (B,6,H,W)
        x, pad = pad_to_multiple(x, self.config.pad_multiple, mode="replicate")
        h = self.act(self.entry[0](unshuffle(x, u)))  # (B,6u^2,H/u,W/u) -> (B,c0,H/u,W/u)
        skips = []
        for i, convs in enumerate(self.enc):
            if i:
                h = self.act(self.entry[i](h))  # (B,c_{i-1},h,w) -> (B,c_i,h/2,w/2)
            for conv in convs:
                h = self.act(conv(h))
            skips.append(h)
        for i in reversed(range(len(self.dec))):
            h = nn.functional.interpolate(self.lateral[i](h), scale_factor=2, mode="nearest") + skips[i]
            for conv in self.dec[i]:
                h = self.act(conv(h))
        r = shuffle(self.head(h), u)  # (B,3u^2,H/u,W/u) -> (B,3,H,W)
        return crop(r, pad).float()

    def forward(self, image: Tensor, reference: Tensor) -> Tensor:
        """wavelet_color_fix(y + r(y, x_lq), x_lq), in float32."""
        y = image.float() + self.residual(image, reference).to(image.device)
        return wavelet_color_fix(y, reference.float(), 1.0, self.config.wavelet_levels)

    def estimate_bytes(self, h: int, w: int, batch: int = 1) -> int:
        """Peak activation bytes of one forward at (h, w), no autograd: two copies of the 6-channel
        input and three working tensors per level in the weights' dtype, plus twelve fp32 3-channel
        images for the residual sum and the wavelet fix (calibrated on CPU, fp32, 2048^2: the peak
        resident set grew by 874 MiB; this gives 935 MiB)."""
        el = torch.finfo(self.dtype).bits // 8
        u, c = self.config.unshuffle, self.config.channels
        feats = sum(3 * ci * -(-h // (u * 2**i)) * -(-w // (u * 2**i)) for i, ci in enumerate(c))
        return batch * (el * (2 * 6 * h * w + feats) + 4 * 12 * 3 * h * w)


def _check_pair(image: Tensor, reference: Tensor) -> None:
    if image.ndim != 4 or image.shape[1] != 3 or image.shape != reference.shape:
        raise ImageInputError(f"FixMod: image {tuple(image.shape)} and reference {tuple(reference.shape)} must both "
                              "be (B,3,H,W) of the same shape (resize the LQ onto the output grid first)")
