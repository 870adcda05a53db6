"""The backbone's fast inference path against the official formulas, written here in the test.

``FrozenBatchNorm2d`` runs as one inference ``batch_norm`` pass, the bottlenecks use in-place
ReLU and residual adds, and the res5 head's 1x1 convs run as matmuls; all must give what
maskrcnn_benchmark's ``x * scale + shift``, out-of-place ops and Paddle's own conv give, to float32
rounding, on non-trivial BN statistics (the seeded init leaves them at identity, where any
per-channel affine bug would be invisible).
"""
from __future__ import annotations

import glob
import os

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest
from PIL import Image

from vinvl.vision import backbone
from vinvl.vision.backbone import Bottleneck, FrozenBatchNorm2d, PointwiseConv, Stem
from vinvl.vision.detector import VinVLDetector

from support.paths import PHOTO_DIR, TINY_DETECTOR as TINY

PHOTO = sorted(glob.glob(os.path.join(PHOTO_DIR, "*.jpg")))[0]


def _randomize_frozen_bn(model: paddle.nn.Layer, seed: int = 3) -> None:
    """Every FrozenBatchNorm2d gets statistics and affine terms far from identity."""
    rng = np.random.default_rng(seed)
    for layer in model.sublayers(include_self=True):
        if isinstance(layer, FrozenBatchNorm2d):
            c = layer.weight.shape[0]
            layer.weight.set_value(rng.uniform(0.5, 1.5, c).astype(np.float32))
            layer.bias.set_value(rng.normal(0.0, 0.5, c).astype(np.float32))
            layer.running_mean.set_value(rng.normal(0.0, 0.5, c).astype(np.float32))
            layer.running_var.set_value(rng.uniform(0.25, 4.0, c).astype(np.float32))


def _official_bn(self: FrozenBatchNorm2d, x: paddle.Tensor) -> paddle.Tensor:
    """maskrcnn_benchmark's FrozenBatchNorm2d.forward: broadcast multiply and add."""
    scale = self.weight * paddle.rsqrt(self.running_var)
    shift = self.bias - self.running_mean * scale
    return x * scale.reshape([1, -1, 1, 1]) + shift.reshape([1, -1, 1, 1])


def _official_bottleneck(self: Bottleneck, x: paddle.Tensor) -> paddle.Tensor:
    out = F.relu(self.bn1(self.conv1(x)))
    out = F.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    identity = x if self.downsample is None else self.downsample(x)
    return F.relu(out + identity)


def _official_stem(self: Stem, x: paddle.Tensor) -> paddle.Tensor:
    return self.maxpool(F.relu(self.bn1(self.conv1(x))))


def test_frozen_bn_is_the_official_affine_map_and_saves_only_its_four_buffers():
    rng = np.random.default_rng(0)
    bn = FrozenBatchNorm2d(16)
    _randomize_frozen_bn(bn)
    x = rng.normal(0.0, 3.0, (2, 16, 5, 7)).astype(np.float32)
    w, b, mean, var = (bn.state_dict()[k].numpy().astype(np.float64) for k in ("weight", "bias", "running_mean", "running_var"))
    scale = w / np.sqrt(var)
    expected = x * scale[None, :, None, None] + (b - mean * scale)[None, :, None, None]
    np.testing.assert_allclose(bn(paddle.to_tensor(x)).numpy(), expected, rtol=1e-5, atol=1e-5)
    assert sorted(bn.state_dict()) == ["bias", "running_mean", "running_var", "weight"]


@pytest.fixture(scope="module")
def tiny_with_bn_statistics():
    detector = VinVLDetector.from_pretrained(TINY)
    _randomize_frozen_bn(detector)
    return detector


def test_pointwise_conv_equals_paddles_conv():
    rng = np.random.default_rng(1)
    for stride in (1, 2):
        layer = PointwiseConv(12, 20, stride)
        reference = paddle.nn.Conv2D(12, 20, 1, stride=stride, bias_attr=False)
        reference.weight.set_value(layer.weight.numpy())
        x = paddle.to_tensor(rng.normal(size=(3, 12, 7, 9)).astype(np.float32))
        out = layer(x)
        assert out.shape == reference(x).shape == [3, 20, 4 if stride == 2 else 7, 5 if stride == 2 else 9]
        np.testing.assert_allclose(out.numpy(), reference(x).numpy(), rtol=1e-5, atol=1e-5)


def test_fast_backbone_gives_the_official_formulas_detections(tiny_with_bn_statistics, monkeypatch):
    photo = np.asarray(Image.open(PHOTO).convert("RGB"))
    fast = tiny_with_bn_statistics.detect([photo])[0]
    monkeypatch.setattr(backbone.FrozenBatchNorm2d, "forward", _official_bn)
    monkeypatch.setattr(backbone.Bottleneck, "forward", _official_bottleneck)
    monkeypatch.setattr(backbone.Stem, "forward", _official_stem)
    monkeypatch.setattr(backbone.PointwiseConv, "forward", paddle.nn.Conv2D.forward)
    reference = tiny_with_bn_statistics.detect([photo])[0]
    assert len(fast) == len(reference) >= 10
    np.testing.assert_allclose(fast.boxes, reference.boxes, rtol=1e-6)
    np.testing.assert_array_equal(fast.labels, reference.labels)
    assert fast.attr_names == reference.attr_names
    np.testing.assert_allclose(fast.scores, reference.scores, rtol=1e-5)
    np.testing.assert_allclose(fast.features, reference.features, rtol=1e-5, atol=1e-5 * np.abs(reference.features).max())
    # the statistics matter: with identity BN the features differ
    monkeypatch.undo()
    plain = VinVLDetector.from_pretrained(TINY).detect([photo])[0]
    assert not np.allclose(plain.features[:5], fast.features[:5], rtol=1e-2)
