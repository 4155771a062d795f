"""VGG16 feature extractor for DISTS / EA-DISTS (Ding et al. 2020), with L2 pooling.

The module mirrors the layer layout of torchvision's ``vgg16().features`` (indices 0..29, the final
max-pool at index 30 is not needed and is omitted) so that a user's local ImageNet weights load by
name: conv layers sit at indices 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28 and their parameters
are called ``features.N.weight`` / ``features.N.bias`` exactly as in torchvision.  As in DISTS, the
max-pools at indices 4, 9, 16, 23 are replaced by :class:`L2Pool2d` (no parameters, so the state dict
is unaffected).

Nothing is ever downloaded: weights come from a local ``.safetensors`` file (preferred) or a
torchvision ``.pth`` file (read with ``torch.load(..., weights_only=True)`` only).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import CheckpointFormatError

logger = logging.getLogger(__name__)

__all__ = [
    "VGG16_CONV_LAYERS",
    "VGG16_STAGE_BOUNDS",
    "DISTS_CHANNELS",
    "L2Pool2d",
    "VGG16Features",
    "load_vgg16_state_dict",
    "convert_vgg16_to_safetensors",
    "read_tensor_file",
    "vgg_weights_hint",
]

#: torchvision ``vgg16().features`` conv layers: index -> (in_channels, out_channels); all 3x3, pad 1.
VGG16_CONV_LAYERS: dict[int, tuple[int, int]] = {
    0: (3, 64),
    2: (64, 64),
    5: (64, 128),
    7: (128, 128),
    10: (128, 256),
    12: (256, 256),
    14: (256, 256),
    17: (256, 512),
    19: (512, 512),
    21: (512, 512),
    24: (512, 512),
    26: (512, 512),
    28: (512, 512),
}
#: torchvision max-pool indices that DISTS replaces by L2 pooling.
_POOL_INDICES: tuple[int, ...] = (4, 9, 16, 23)
#: Stage slices [start, stop) of ``features``: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
VGG16_STAGE_BOUNDS: tuple[tuple[int, int], ...] = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
#: Channels of the DISTS feature list: raw image + the five stages (sum 1475).
DISTS_CHANNELS: tuple[int, ...] = (3, 64, 128, 256, 512, 512)

_N_LAYERS = 30  # features[0:30]; torchvision's trailing max-pool (index 30) is not used
_VGG_HINT = (
    "ImageNet VGG16 weights, e.g. torchvision's vgg16-397923af.pth converted with "
    "`gendr-pix convert --vgg16 vgg16-397923af.pth -o vgg16.safetensors` or passed directly"
)


class L2Pool2d(nn.Module):
    """L2 pooling of DISTS: ``sqrt(depthwise_conv(x^2, g) + 1e-12)``, stride 2, padding 1.

    ``g`` is the normalised outer product of ``hanning(5)[1:-1] = [0.5, 1, 0.5]``, i.e.
    ``[[1, 2, 1], [2, 4, 2], [1, 2, 1]] / 16``.  Output size is ``ceil(H/2) x ceil(W/2)``.  The filter
    is a non-persistent buffer, so it does not appear in (and does not disturb) the state dict.
    """

    def __init__(self, eps: float = 1e-12) -> None:
        super().__init__()
        a = torch.tensor([0.5, 1.0, 0.5], dtype=torch.float64)
        g = a[:, None] * a[None, :]
        g = g / g.sum()
        self.register_buffer("filter", g.to(torch.float32)[None, None], persistent=False)  # (1,1,3,3)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1]
        weight = self.filter.to(dtype=x.dtype).expand(c, 1, 3, 3)  # (C,1,3,3) depthwise
        out = F.conv2d(x * x, weight, stride=2, padding=1, groups=c)  # (B,C,ceil(H/2),ceil(W/2))
        return torch.sqrt(out + self.eps)


class VGG16Features(nn.Module):
    """torchvision-compatible ``vgg16().features[0:30]`` with L2 pooling; returns the 5 DISTS stages.

    Input: ImageNet-normalised (B,3,H,W).  Output: list of relu1_2 (B,64,H,W), relu2_2
    (B,128,H/2,W/2), relu3_3 (B,256,H/4,W/4), relu4_3 (B,512,H/8,W/8), relu5_3 (B,512,H/16,W/16)
    (sizes rounded up).  Freshly constructed weights are PyTorch's default init; use
    :meth:`init_random` for a seeded init or :meth:`load_weights` for real weights.
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for idx in range(_N_LAYERS):
            if idx in VGG16_CONV_LAYERS:
                cin, cout = VGG16_CONV_LAYERS[idx]
                layers.append(nn.Conv2d(cin, cout, kernel_size=3, padding=1))
            elif idx in _POOL_INDICES:
                layers.append(L2Pool2d())
            else:
                layers.append(nn.ReLU(inplace=False))
        self.features = nn.Sequential(*layers)

    @torch.no_grad()
    def init_random(self, seed: int = 0) -> None:
        """Seeded Kaiming-normal (fan_out) init as torchvision does, biases 0; for tests only."""
        gen = torch.Generator().manual_seed(int(seed))
        for idx, (_, cout) in VGG16_CONV_LAYERS.items():
            conv = self.features[idx]
            std = (2.0 / (cout * 9)) ** 0.5
            w = torch.randn(conv.weight.shape, generator=gen, dtype=torch.float32) * std
            conv.weight.copy_(w)
            conv.bias.zero_()

    @torch.no_grad()
    def load_weights(self, state_dict: Mapping[str, Tensor]) -> None:
        """Copy a normalised state dict (keys ``features.N.weight|bias``, see
        :func:`load_vgg16_state_dict`) into the conv layers."""
        for idx in VGG16_CONV_LAYERS:
            conv = self.features[idx]
            conv.weight.copy_(state_dict[f"features.{idx}.weight"])
            conv.bias.copy_(state_dict[f"features.{idx}.bias"])

    def forward(self, x: Tensor) -> list[Tensor]:
        outs: list[Tensor] = []
        h = x
        for start, stop in VGG16_STAGE_BOUNDS:
            for idx in range(start, stop):
                h = self.features[idx](h)
            outs.append(h)
        return outs


def _expected_shapes() -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for idx, (cin, cout) in VGG16_CONV_LAYERS.items():
        shapes[f"features.{idx}.weight"] = (cout, cin, 3, 3)
        shapes[f"features.{idx}.bias"] = (cout,)
    return shapes


def read_tensor_file(path: Path, what: str) -> dict[str, Tensor]:
    """Read a ``.safetensors`` file or a ``torch.save`` file (weights_only) into a flat dict."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{what} file not found: '{path}'. Nothing is downloaded automatically; "
            "check the path (absolute, or relative to the working directory)."
        )
    if path.suffix.lower() == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as exc:  # pragma: no cover - safetensors is a core dependency
            raise CheckpointFormatError(
                f"cannot read '{path}': the 'safetensors' package is not installed (pip install safetensors)"
            ) from exc
        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as exc:  # noqa: BLE001 - report any parse failure with the path
            raise CheckpointFormatError(f"cannot read {what} safetensors file '{path}': {exc}") from exc
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointFormatError(
            f"cannot read {what} file '{path}' with torch.load(weights_only=True): {exc}. "
            "Provide a .safetensors file or a plain torchvision state dict (.pth)."
        ) from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointFormatError(
            f"{what} file '{path}' does not hold a flat state dict of tensors (got {type(obj).__name__})."
        )
    return dict(obj)


def _normalise_vgg_key(key: str) -> str | None:
    """Map ``features.N.*``, ``vgg.features.N.*``, ``vgg.N.*``, ``N.*`` (optionally with a
    ``module.`` prefix) to ``features.N.*``; return None for keys that are not feature layers."""
    k = key
    for prefix in ("module.", "vgg16.", "vgg.", "net."):
        if k.startswith(prefix):
            k = k[len(prefix) :]
    if k.startswith("features."):
        k = k[len("features.") :]
    parts = k.split(".")
    if len(parts) == 2 and parts[0].isdigit() and parts[1] in ("weight", "bias"):
        return f"features.{int(parts[0])}.{parts[1]}"
    return None


def load_vgg16_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Load ImageNet VGG16 feature weights from a local file into ``features.N.weight|bias`` float32.

    Accepts ``.safetensors`` (preferred) or a torchvision ``.pth`` (``torch.load`` with
    ``weights_only=True``).  Keys may be ``features.N.*``, ``vgg.features.N.*``, ``vgg.N.*`` or bare
    ``N.*``; ``classifier.*`` and other non-feature keys of a full vgg16 state dict are ignored.

    Raises:
        FileNotFoundError: the path does not exist (message names it).
        CheckpointFormatError: unreadable file, a wrong tensor shape (names key, expected and found
            shape) or missing conv keys (names them).
    """
    path = Path(path).expanduser()
    raw = read_tensor_file(path, "VGG16 weights")
    expected = _expected_shapes()
    out: dict[str, Tensor] = {}
    ignored: list[str] = []
    for key, value in raw.items():
        norm = _normalise_vgg_key(key)
        if norm is None or norm not in expected:
            if not key.startswith(("classifier.", "module.classifier.", "vgg.classifier.")):
                ignored.append(key)
            continue
        if tuple(value.shape) != expected[norm]:
            raise CheckpointFormatError(
                f"VGG16 weights file '{path}': key '{key}' has shape {tuple(value.shape)}, "
                f"expected {expected[norm]} (torchvision vgg16().features layout). "
                "Is this a VGG16 (not VGG19 / VGG16-BN) ImageNet checkpoint?"
            )
        out[norm] = value.detach().to(dtype=torch.float32, device="cpu")
    missing = sorted(set(expected) - set(out), key=lambda k: (int(k.split(".")[1]), k))
    if missing:
        sample = list(raw)[:6]
        raise CheckpointFormatError(
            f"VGG16 weights file '{path}' lacks {len(missing)} conv tensor(s), e.g. {missing[:4]}; "
            f"found keys like {sample}. Expected torchvision vgg16 keys 'features.N.weight/bias' "
            f"(optionally prefixed 'vgg.') for N in {sorted(VGG16_CONV_LAYERS)}."
        )
    if ignored:
        logger.debug("VGG16 weights '%s': ignored %d non-feature keys, e.g. %s", path, len(ignored), ignored[:4])
    return out


def convert_vgg16_to_safetensors(src: str | Path, dst: str | Path) -> Path:
    """Convert a local torchvision VGG16 checkpoint (e.g. ``vgg16-397923af.pth``) to a safetensors
    file holding only the ``features.N.weight|bias`` tensors (float32).  Returns ``dst``."""
    from safetensors.torch import save_file

    state = load_vgg16_state_dict(src)
    dst = Path(dst).expanduser()
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in state.items()}, str(dst), metadata={"format": "pt", "model": "vgg16.features"}
    )
    logger.info("wrote VGG16 feature weights (%d tensors) to %s", len(state), dst)
    return dst


def vgg_weights_hint() -> str:
    """Human-readable description of the VGG16 weights file DISTS needs (used in error messages)."""
    return _VGG_HINT
