"""AdamW taking the official fine-tuning's optimiser step, on Paddle's AdamW kernel.

microsoft/Oscar's ``run_retrieval.py`` clips with ``torch.nn.utils.clip_grad_norm_`` and steps
pytorch_transformers' ``AdamW`` (``correct_bias=True``). Paddle's ``AdamW`` computes the same
moments but differs in three places, each fixed here without changing the kernel:

- epsilon: Paddle divides by ``sqrt(v_hat) + eps``; pytorch_transformers folds the bias
  corrections into the step size and divides by ``sqrt(v) + eps``, which is
  ``sqrt(v_hat) + eps / sqrt(1 - beta2^t)``. So each update passes the kernel that effective
  epsilon, ``t`` read from the parameter's own ``beta2^t`` accumulator (the one the kernel's bias
  correction uses, restored with the optimizer state on resume);
- weight decay: Paddle decays the weights before the Adam update (``p *= 1 - lr * wd``, then the
  update); pytorch_transformers decays the updated ones. So the kernel runs without decay and the
  decayed parameters are scaled by ``1 - lr * wd`` after it;
- clipping: Paddle's ``ClipGradByGlobalNorm`` scales by ``max_norm / norm``, torch by
  ``max_norm / (norm + 1e-6)`` when that is below 1. So the optimizer takes no Paddle clip and
  clips the gradients itself at the start of :meth:`OfficialAdamW.step`.

Float32 master weights (``multi_precision``) are not supported: the decay would have to reach
them; mixed precision runs keep float32 parameters (paddlenlp's O1).
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, List, Optional

import paddle

__all__ = ["CLIP_EPSILON", "clip_grad_norm_", "OfficialAdamW"]

CLIP_EPSILON = 1e-6  # torch.nn.utils.clip_grad_norm_'s term added to the norm


@paddle.no_grad()
def clip_grad_norm_(grads: List[paddle.Tensor], max_norm: float, epsilon: float = CLIP_EPSILON) -> float:
    """``torch.nn.utils.clip_grad_norm_`` (2-norm) on gradient tensors, in place: each is scaled by
    ``max_norm / (norm + epsilon)`` when that is below 1. Returns the global norm before clipping."""
    total = math.sqrt(float(paddle.add_n([paddle.sum(paddle.square(grad)) for grad in grads])))  # one device read
    coefficient = max_norm / (total + epsilon)
    if coefficient < 1:
        for grad in grads:
            grad.scale_(coefficient)
    return total


class OfficialAdamW(paddle.optimizer.AdamW):
    """``paddle.optimizer.AdamW`` whose step is pytorch_transformers' AdamW after torch's clipping.

    ``weight_decay`` applies to the parameters ``apply_decay_param_fun`` (called with a parameter's
    unique name) accepts, all when it is None; ``max_grad_norm`` > 0 clips the global gradient norm.
    Takes a flat list of parameters (parameter groups could carry their own epsilon).
    """

    def __init__(
        self,
        learning_rate,
        parameters: Iterable[paddle.Tensor],
        weight_decay: float = 0.0,
        apply_decay_param_fun: Optional[Callable[[str], bool]] = None,
        max_grad_norm: float = 0.0,
        beta1: float = 0.9,
        beta2: float = 0.999,
        epsilon: float = 1e-8,
        multi_precision: bool = False,
    ):
        parameters = list(parameters)
        if any(isinstance(item, dict) for item in parameters):
            raise ValueError("OfficialAdamW takes a list of parameters, not parameter groups")
        if multi_precision:
            raise ValueError(
                "OfficialAdamW does not keep float32 master weights (multi_precision): the official decay "
                "order would miss them; train with float32 parameters (fp16_opt_level O1)"
            )
        super().__init__(
            learning_rate=learning_rate, parameters=parameters, beta1=beta1, beta2=beta2, epsilon=epsilon,
            weight_decay=0.0,  # applied after the update, in _append_optimize_op
        )
        self.official_epsilon = float(epsilon)
        self.decoupled_weight_decay = float(weight_decay)
        self.apply_decay_param_fun = apply_decay_param_fun or (lambda name: True)
        self.max_grad_norm = float(max_grad_norm)
        self.trained_parameters = parameters

    def step(self) -> None:
        """Clip the gradients as torch does, then take the update."""
        if self.max_grad_norm > 0:
            grads = [p.grad for p in self.trained_parameters if not p.stop_gradient and p.grad is not None]
            if grads:
                clip_grad_norm_(grads, self.max_grad_norm)
        super().step()

    def _append_optimize_op(self, block, param_and_grad):
        """Paddle's update of one parameter with the official epsilon, then the official decay."""
        param = param_and_grad[0]
        beta2_power = float(self._get_accumulator_master(self._beta2_pow_acc_str, param))  # beta2^t of this update
        self._epsilon = self.official_epsilon / math.sqrt(1.0 - beta2_power)
        result = super()._append_optimize_op(block, param_and_grad)
        if self.decoupled_weight_decay and self.apply_decay_param_fun(param.name):
            learning_rate = self.get_lr() * param.optimize_attr["learning_rate"]
            with paddle.no_grad():
                param.scale_(1.0 - learning_rate * self.decoupled_weight_decay)
        return result
