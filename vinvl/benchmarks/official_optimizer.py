"""The official fine-tuning's optimiser rules, written out in numpy, to hold the Trainer against.

microsoft/Oscar's ``oscar/run_retrieval.py`` takes one optimiser step as:

1. ``torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)``: the gradients are scaled
   by ``max_norm / (total_norm + 1e-6)`` when that is below 1 (``total_norm`` the 2-norm over all of them);
2. ``scheduler.step()``: pytorch_transformers' ``WarmupLinearSchedule`` (warmup 0 in the recipes),
   the learning rate of step k (1-based) is ``lr * (T - k) / T``, set *before* the update;
3. ``optimizer.step()``: pytorch_transformers' ``AdamW`` with ``correct_bias=True`` over two groups,
   ``weight_decay`` for every parameter whose name contains neither ``bias`` nor ``LayerNorm.weight``
   and 0 for those: ``p -= lr * sqrt(1 - b2^k) / (1 - b1^k) * m / (sqrt(v) + eps)``, then
   ``p -= lr * weight_decay * p`` (on the updated ``p``).

Four native conventions of paddlenlp's Trainer and Paddle differ. The project's Trainer takes the
official step (:mod:`vinvl.training.official_adamw`, the scheduler stepped once at the start); each
convention is a switch here, so the test can show each one would be seen and the benchmark
measures each alone (:mod:`vinvl.benchmarks.optimizer_conventions`):

- ``scheduler_after_update``: paddlenlp steps the scheduler after the optimizer, so step k uses
  ``lr * (T - k + 1) / T``;
- ``eps_on_corrected``: Paddle adds ``eps`` to ``sqrt(v_hat)`` (the bias-corrected second moment),
  i.e. ``p -= lr * m_hat / (sqrt(v_hat) + eps)``; pytorch_transformers adds it to ``sqrt(v)``,
  which is ``eps / sqrt(1 - b2^k)`` on ``sqrt(v_hat)``;
- ``decay_before_update``: Paddle decays the weights as they were before the step
  (``p *= 1 - lr * weight_decay``, then the Adam update), pytorch_transformers the updated ones: the
  two differ by ``lr * weight_decay`` (1e-6 in the recipes) of one update;
- ``clip_epsilon``: torch scales clipped gradients by ``max_norm / (total_norm + 1e-6)``, Paddle's
  ``ClipGradByGlobalNorm`` by ``max_norm / total_norm`` (0 here): a relative 1e-6 / total_norm.

Parameters without a gradient are left alone (their moments too), as both optimizers do.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, Mapping, Optional

import numpy as np

__all__ = ["OFFICIAL_NO_DECAY", "official_decays", "official_lr_factor", "clip_grad_norm", "OfficialOptimizer"]

OFFICIAL_NO_DECAY = ("bias", "LayerNorm.weight")  # run_retrieval.py's no_decay list


def official_decays(name: str) -> bool:
    """Whether the official optimizer decays the parameter of this (official) name."""
    return not any(part in name for part in OFFICIAL_NO_DECAY)


def official_lr_factor(step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """``WarmupLinearSchedule.lr_lambda(step)``: the learning rate's factor after ``step`` scheduler steps."""
    if step < warmup_steps:
        return float(step) / float(max(1, warmup_steps))
    return max(0.0, float(total_steps - step) / float(max(1.0, total_steps - warmup_steps)))


def clip_grad_norm(grads: Mapping[str, np.ndarray], max_norm: float, epsilon: float = 1e-6) -> Dict[str, np.ndarray]:
    """``torch.nn.utils.clip_grad_norm_`` (2-norm): the gradients, scaled by ``max_norm / (norm + epsilon)``
    when that is below 1."""
    total = math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads.values()))
    coefficient = max_norm / (total + epsilon)
    if coefficient >= 1:
        return {name: np.asarray(g, dtype=np.float64) for name, g in grads.items()}
    return {name: np.asarray(g, dtype=np.float64) * coefficient for name, g in grads.items()}


class OfficialOptimizer:
    """The official step (clip, schedule, AdamW) over float64 copies of named parameters."""

    def __init__(
        self,
        params: Mapping[str, np.ndarray],
        learning_rate: float,
        weight_decay: float,
        total_steps: int,
        warmup_steps: int = 0,
        betas: tuple = (0.9, 0.999),
        eps: float = 1e-8,
        max_grad_norm: float = 1.0,
        decayed: Optional[Iterable[str]] = None,
        scheduler_after_update: bool = False,
        eps_on_corrected: bool = False,
        decay_before_update: bool = False,
        clip_epsilon: float = 1e-6,
    ):
        """``decayed``: the names weight decay applies to (default: the official rule on the names)."""
        self.params = {name: np.array(value, dtype=np.float64) for name, value in params.items()}
        self.decayed = set(decayed) if decayed is not None else {n for n in self.params if official_decays(n)}
        self.learning_rate, self.weight_decay = learning_rate, weight_decay
        self.total_steps, self.warmup_steps = total_steps, warmup_steps
        self.betas, self.eps, self.max_grad_norm = betas, eps, max_grad_norm
        self.scheduler_after_update, self.eps_on_corrected = scheduler_after_update, eps_on_corrected
        self.decay_before_update, self.clip_epsilon = decay_before_update, clip_epsilon
        self.moments: Dict[str, list] = {}  # name -> [step, m, v]
        self.steps = 0
        self.last_lr = 0.0

    def lr_of_step(self, step: int) -> float:
        """The learning rate the ``step``-th update (1-based) uses."""
        scheduler_steps = step - 1 if self.scheduler_after_update else step
        return self.learning_rate * official_lr_factor(scheduler_steps, self.total_steps, self.warmup_steps)

    def step(self, grads: Mapping[str, np.ndarray]) -> None:
        """One update with the gradients of (some of) the parameters, before clipping."""
        self.steps += 1
        if self.max_grad_norm > 0:
            grads = clip_grad_norm(grads, self.max_grad_norm, self.clip_epsilon)
        lr = self.last_lr = self.lr_of_step(self.steps)
        beta1, beta2 = self.betas
        for name, grad in grads.items():
            p = self.params[name]
            state = self.moments.setdefault(name, [0, np.zeros_like(p), np.zeros_like(p)])
            state[0] += 1
            k, m, v = state
            m *= beta1
            m += (1 - beta1) * grad
            v *= beta2
            v += (1 - beta2) * grad * grad
            correction1, correction2 = 1 - beta1**k, 1 - beta2**k
            decays = name in self.decayed and self.weight_decay > 0
            if decays and self.decay_before_update:
                p -= lr * self.weight_decay * p
            if self.eps_on_corrected:
                p -= lr * (m / correction1) / (np.sqrt(v / correction2) + self.eps)
            else:
                p -= lr * math.sqrt(correction2) / correction1 * m / (np.sqrt(v) + self.eps)
            if decays and not self.decay_before_update:
                p -= lr * self.weight_decay * p
