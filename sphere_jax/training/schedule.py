"""AdamW with global-norm gradient clipping and a warmup-then-decay learning-rate schedule."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import jax
import optax

DecayKind = Literal["cosine", "linear", "constant"]
DECAY_KINDS: tuple[DecayKind, ...] = ("cosine", "linear", "constant")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Settings of the optimizer and its learning-rate schedule.

    Attributes:
        learning_rate: Peak learning rate, reached at the end of warmup.
        total_steps: Optimizer steps of the whole run; the decay ends here and the rate stays at its end value after.
        warmup_steps: Steps of linear warmup from 0 to `learning_rate`.
        decay: Shape after warmup: "cosine" or "linear" decay to `end_learning_rate_ratio * learning_rate`, or
            "constant".
        end_learning_rate_ratio: Final learning rate as a fraction of the peak, in [0, 1].
        weight_decay: Decoupled weight decay of AdamW (per step, multiplied by the learning rate).
        decay_1d_params: Also decay parameters with fewer than 2 dimensions (norm scales, biases). Off by default,
            as is usual for transformers.
        b1: Adam first-moment decay.
        b2: Adam second-moment decay.
        eps: Adam denominator epsilon.
        max_grad_norm: Clip gradients to this global L2 norm before the update; `None` disables clipping.
    """

    learning_rate: float = 5e-7
    total_steps: int = 1000
    warmup_steps: int = 0
    decay: DecayKind = "cosine"
    end_learning_rate_ratio: float = 0.0
    weight_decay: float = 0.0
    decay_1d_params: bool = False
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: float | None = 1.0

    def __post_init__(self) -> None:
        if not (self.learning_rate > 0.0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"learning_rate must be a finite number > 0, got {self.learning_rate}.")
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}.")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(
                f"warmup_steps must lie in [0, total_steps={self.total_steps}], got {self.warmup_steps}."
            )
        if self.decay not in DECAY_KINDS:
            raise ValueError(f"Unknown decay {self.decay!r}; expected one of {DECAY_KINDS}.")
        if not 0.0 <= self.end_learning_rate_ratio <= 1.0:
            raise ValueError(f"end_learning_rate_ratio must lie in [0, 1], got {self.end_learning_rate_ratio}.")
        if self.weight_decay < 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}.")
        if not (0.0 <= self.b1 < 1.0 and 0.0 <= self.b2 < 1.0):
            raise ValueError(f"b1 and b2 must lie in [0, 1), got b1={self.b1}, b2={self.b2}.")
        if self.eps <= 0.0:
            raise ValueError(f"eps must be > 0, got {self.eps}.")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0.0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {self.max_grad_norm}.")


def make_schedule(config: OptimizerConfig) -> optax.Schedule:
    """Build the learning rate as a function of the optimizer step (0-based).

    The rate rises linearly from 0 at step 0 to the peak at `warmup_steps`, then follows `decay` to
    `end_learning_rate_ratio * learning_rate` at `total_steps`, and stays there.
    """
    peak = config.learning_rate
    end = config.end_learning_rate_ratio * peak
    decay_steps = config.total_steps - config.warmup_steps
    if config.decay == "constant" or decay_steps == 0:
        after_warmup = optax.constant_schedule(peak if config.decay == "constant" else end)
    elif config.decay == "cosine":
        after_warmup = optax.cosine_decay_schedule(peak, decay_steps, alpha=config.end_learning_rate_ratio)
    else:
        after_warmup = optax.linear_schedule(peak, end, decay_steps)
    if config.warmup_steps == 0:
        return after_warmup
    warmup = optax.linear_schedule(0.0, peak, config.warmup_steps)
    return optax.join_schedules([warmup, after_warmup], boundaries=[config.warmup_steps])


def make_optimizer(config: OptimizerConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Build AdamW behind global-norm gradient clipping.

    Returns:
        The optimizer and its learning-rate schedule, so the trainer can log `schedule(step)`.
    """
    schedule = make_schedule(config)
    adamw = optax.adamw(
        learning_rate=schedule,
        b1=config.b1,
        b2=config.b2,
        eps=config.eps,
        weight_decay=config.weight_decay,
        mask=None if config.decay_1d_params else _weight_decay_mask,
    )
    if config.max_grad_norm is None:
        return adamw, schedule
    return optax.chain(optax.clip_by_global_norm(config.max_grad_norm), adamw), schedule


def _weight_decay_mask(params: Any) -> Any:
    return jax.tree.map(lambda param: param.ndim >= 2, params)
