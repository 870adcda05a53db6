"""OfficialAdamW against the official rules written out in numpy (vinvl.benchmarks.official_optimizer),
on a few parameters in float64 with constants large enough that every convention shows."""
import numpy as np
import pytest

import vinvl  # noqa: F401  (CPU runtime defaults before paddle)
import paddle

from vinvl.benchmarks.official_optimizer import OfficialOptimizer
from vinvl.training.official_adamw import OfficialAdamW, clip_grad_norm_

START = {"decayed": np.array([1.0, -2.0, 0.5]), "exempt": np.array([0.3, 0.1, -0.7])}
# Per update, the gradients given (a parameter left out gets none); the first is clipped at 1.0.
GRADIENTS = [
    {"decayed": np.array([0.3, -0.1, 2.0]), "exempt": np.array([0.6, -0.2, 0.1])},
    {"decayed": np.array([-0.05, 0.04, 0.1])},
    {"decayed": np.array([0.02, 0.02, -0.03]), "exempt": np.array([0.01, -0.04, 0.02])},
]
SETTINGS = dict(learning_rate=0.1, weight_decay=0.2, total_steps=5, warmup_steps=2, eps=0.3, max_grad_norm=1.0)


def _float64(fn):
    previous = paddle.get_default_dtype()
    paddle.set_default_dtype("float64")
    try:
        return fn()
    finally:
        paddle.set_default_dtype(previous)


def _train(**switches):
    """Three updates of OfficialAdamW in the official order (scheduler stepped before each) and of the
    numpy rules with ``switches``; returns both weights."""

    def run():
        params = {
            name: paddle.create_parameter([3], "float64", default_initializer=paddle.nn.initializer.Assign(value))
            for name, value in START.items()
        }
        total, warmup = SETTINGS["total_steps"], SETTINGS["warmup_steps"]
        schedule = paddle.optimizer.lr.LambdaDecay(
            SETTINGS["learning_rate"],
            lambda step: step / warmup if step < warmup else max(0.0, (total - step) / (total - warmup)),
        )
        optimizer = OfficialAdamW(
            schedule, list(params.values()), weight_decay=SETTINGS["weight_decay"], epsilon=SETTINGS["eps"],
            max_grad_norm=SETTINGS["max_grad_norm"], apply_decay_param_fun=lambda name: name == params["decayed"].name,
        )
        reference = OfficialOptimizer(START, decayed={"decayed"}, **SETTINGS, **switches)
        for grads in GRADIENTS:
            schedule.step()
            loss = paddle.add_n([(params[name] * paddle.to_tensor(grad)).sum() for name, grad in grads.items()])
            loss.backward()
            optimizer.step()
            optimizer.clear_grad(set_to_zero=False)  # no gradient at all for a parameter left out
            reference.step(grads)
        return {name: param.numpy() for name, param in params.items()}, reference.params

    return _float64(run)


def _largest_difference(weights, reference):
    return max(float(np.abs(weights[name] - reference[name]).max()) for name in START)


def test_updates_equal_the_official_rules_as_written():
    weights, reference = _train()
    assert _largest_difference(weights, reference) < 1e-14  # the exempt parameter's own t lags after update 2
    assert all(not np.array_equal(weights[name], START[name]) for name in START)


@pytest.mark.parametrize(
    "switch",
    [{"eps_on_corrected": True}, {"decay_before_update": True}, {"clip_epsilon": 0.0}],
    ids=["paddle eps", "paddle decay order", "paddle clipping"],
)
def test_each_paddle_convention_would_show(switch):
    weights, reference = _train(**switch)
    assert _largest_difference(weights, reference) > 1e-10  # clipping's, the smallest: about 6e-9


def test_clipping_is_torchs():
    def run():
        grads = [paddle.to_tensor([3.0, 0.0]), paddle.to_tensor([0.0, 4.0])]
        norm = clip_grad_norm_(grads, max_norm=1.0)
        kept = [paddle.to_tensor([0.3, 0.4])]
        clip_grad_norm_(kept, max_norm=0.5)  # 0.5 / (0.5 + 1e-6) < 1: clipped too
        unclipped = [paddle.to_tensor([0.3, 0.4])]
        clip_grad_norm_(unclipped, max_norm=0.6)
        return norm, [g.numpy() for g in grads], kept[0].numpy(), unclipped[0].numpy()

    norm, grads, kept, unclipped = _float64(run)
    assert norm == pytest.approx(5.0, rel=1e-15)
    np.testing.assert_allclose(np.concatenate(grads), np.array([3.0, 0, 0, 4.0]) / (5.0 + 1e-6), rtol=1e-15)
    np.testing.assert_allclose(kept, np.array([0.3, 0.4]) * 0.5 / (0.5 + 1e-6), rtol=1e-15)
    np.testing.assert_array_equal(unclipped, [0.3, 0.4])


def test_master_weights_and_parameter_groups_are_refused():
    param = paddle.create_parameter([2], "float32")
    with pytest.raises(ValueError, match="master weights"):
        OfficialAdamW(0.1, [param], multi_precision=True)
    with pytest.raises(ValueError, match="parameter groups"):
        OfficialAdamW(0.1, [{"params": [param]}])
