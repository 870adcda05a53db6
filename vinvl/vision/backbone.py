"""ResNe(X)t C4 body and res5 head with frozen batch norm, as maskrcnn_benchmark builds them.

Sub-layer names follow the official module tree (``stem.conv1``, ``layer3.5.downsample.0``, ...)
so an official state dict maps onto this one key for key. ``STRIDE_IN_1X1 False`` (VinVL) puts
each stage's stride in the grouped 3x3 conv, as the Caffe2/fb.torch ResNeXt do.
"""
from __future__ import annotations

from typing import List, Tuple

import paddle
import paddle.nn.functional as F
from paddle import nn

from .config import DetectorConfig


class FrozenBatchNorm2d(nn.Layer):
    """Batch norm with fixed statistics and affine terms: ``x * scale + shift`` per channel, where
    ``scale = w / sqrt(var)`` and ``shift = b - mean * scale``.

    No epsilon, as the official layer; the four tensors are buffers saved with the weights. The
    per-channel multiply-add runs as Paddle's inference ``batch_norm`` on an identity mean and
    variance (two non-persistable buffers), which computes exactly ``x * scale + shift`` in one
    pass, about 10x faster on CPU than two broadcast element-wise ops on ``[N, C, H, W]``.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("weight", paddle.ones([channels]))
        self.register_buffer("bias", paddle.zeros([channels]))
        self.register_buffer("running_mean", paddle.zeros([channels]))
        self.register_buffer("running_var", paddle.ones([channels]))
        self.register_buffer("_identity_mean", paddle.zeros([channels]), persistable=False)
        self.register_buffer("_identity_var", paddle.ones([channels]), persistable=False)

    def scale_shift(self) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """The per-channel ``scale`` and ``shift`` the frozen statistics and affine terms amount to."""
        scale = self.weight * paddle.rsqrt(self.running_var)
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        scale, shift = self.scale_shift()
        return F.batch_norm(x, self._identity_mean, self._identity_var, scale, shift, training=False, epsilon=0.0)


def conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2D:
    """A bias-free conv with 'same' padding for odd kernels (the body's convs)."""
    return nn.Conv2D(
        in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, groups=groups, bias_attr=False
    )


class PointwiseConv(nn.Conv2D):
    """A bias-free 1x1 conv computed as one ``[N*H*W, C_in] x [C_in, C_out]`` matmul over the whole batch.

    Paddle's CPU conv runs one GEMM per image, which wastes most of the matmul's speed on many small
    maps (the res5 head's 7x7 and 14x14 RoI maps): as one matmul, transposes included, these convs
    take about 30% less CPU time. Same parameter (``weight``, ``[out, in, 1, 1]``) as ``nn.Conv2D``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(in_channels, out_channels, 1, stride=stride, bias_attr=False)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        stride = self._stride[0]
        if stride > 1:
            x = x[:, :, ::stride, ::stride]
        n, channels, height, width = x.shape
        rows = x.transpose([0, 2, 3, 1]).reshape([-1, channels])
        out = paddle.matmul(rows, self.weight.reshape([self._out_channels, channels]), transpose_y=True)
        return out.reshape([n, height, width, self._out_channels]).transpose([0, 3, 1, 2])


class Bottleneck(nn.Layer):
    """1x1 -> grouped 3x3 -> 1x1 residual block; a 1x1 projection shortcut when the width changes.

    ``pointwise_matmul``: the 1x1 convs as :class:`PointwiseConv` (for batches of small maps).
    """

    def __init__(
        self,
        in_channels: int,
        bottleneck: int,
        out_channels: int,
        groups: int,
        stride_in_1x1: bool,
        stride: int,
        pointwise_matmul: bool = False,
    ) -> None:
        super().__init__()

        def pointwise(cin: int, cout: int, stride: int = 1) -> nn.Conv2D:
            return PointwiseConv(cin, cout, stride) if pointwise_matmul else conv(cin, cout, 1, stride)

        self.downsample = None
        if in_channels != out_channels:
            self.downsample = nn.Sequential(pointwise(in_channels, out_channels, stride), FrozenBatchNorm2d(out_channels))
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = pointwise(in_channels, bottleneck, stride_1x1)
        self.bn1 = FrozenBatchNorm2d(bottleneck)
        self.conv2 = conv(bottleneck, bottleneck, 3, stride_3x3, groups=groups)
        self.bn2 = FrozenBatchNorm2d(bottleneck)
        self.conv3 = pointwise(bottleneck, out_channels)
        self.bn3 = FrozenBatchNorm2d(out_channels)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        # In-place ReLU and residual add on the block's own intermediates: no fresh [N, C, H, W]
        # buffers to fault in, which costs more on CPU than the element-wise work itself.
        out = F.relu_(self.bn1(self.conv1(x)))
        out = F.relu_(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu_(out.add_(identity))


class Stem(nn.Layer):
    """7x7/2 conv, frozen BN, ReLU, 3x3/2 max pool."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2D(3, out_channels, 7, stride=2, padding=3, bias_attr=False)
        self.bn1 = FrozenBatchNorm2d(out_channels)
        self.maxpool = nn.MaxPool2D(kernel_size=3, stride=2, padding=1)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.maxpool(F.relu_(self.bn1(self.conv1(x))))


def make_stage(
    config: DetectorConfig, index: int, in_channels: int, blocks: int, first_stride: int, pointwise_matmul: bool = False
) -> nn.Sequential:
    """Stage ``index`` (1 = res2 ... 4 = res5): widths double per stage from res2's."""
    factor = 2 ** (index - 1)
    bottleneck = config["MODEL.RESNETS.NUM_GROUPS"] * config["MODEL.RESNETS.WIDTH_PER_GROUP"] * factor
    out_channels = config["MODEL.RESNETS.RES2_OUT_CHANNELS"] * factor
    layers: List[nn.Layer] = []
    for block in range(blocks):
        layers.append(
            Bottleneck(
                in_channels if block == 0 else out_channels,
                bottleneck,
                out_channels,
                config["MODEL.RESNETS.NUM_GROUPS"],
                config["MODEL.RESNETS.STRIDE_IN_1X1"],
                first_stride if block == 0 else 1,
                pointwise_matmul,
            )
        )
    return nn.Sequential(*layers)


class ResNetC4(nn.Layer):
    """Stem + res2..res4: the backbone whose res4 map (stride 16) feeds the RPN and the pooler."""

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        res2, res3, res4, _ = config.block_counts()
        stem_out = config["MODEL.RESNETS.STEM_OUT_CHANNELS"]
        width = config["MODEL.RESNETS.RES2_OUT_CHANNELS"]
        self.stem = Stem(stem_out)
        self.layer1 = make_stage(config, 1, stem_out, res2, first_stride=1)
        self.layer2 = make_stage(config, 2, width, res3, first_stride=2)
        self.layer3 = make_stage(config, 3, width * 2, res4, first_stride=2)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.layer3(self.layer2(self.layer1(self.stem(x))))


class Backbone(nn.Layer):
    """Holds the body under the official name ``backbone.body``."""

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        self.body = ResNetC4(config)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.body(x)


class ResNetHead(nn.Layer):
    """The res5 stage run on pooled RoIs (stride 2 in its first block): ``head.layer4``.

    Its inputs are hundreds of 14x14 maps, so its 1x1 convs run as one matmul each (:class:`PointwiseConv`).
    """

    def __init__(self, config: DetectorConfig) -> None:
        super().__init__()
        blocks = config.block_counts()[3]
        in_channels = config["MODEL.RESNETS.RES2_OUT_CHANNELS"] * 4
        self.layer4 = make_stage(config, 4, in_channels, blocks, first_stride=2, pointwise_matmul=True)

    def forward(self, x: paddle.Tensor) -> paddle.Tensor:
        return self.layer4(x)
