"""Preference-optimization losses on summed completion log-probabilities.

Every function here is a pure JAX function of per-pair arrays, so it can run under `jit` on a sharded batch. The
inputs are, for each preference pair, the summed log-probability of the chosen and of the rejected completion under
the policy and under the frozen reference model, and the number of completion tokens of each. Log-probs are summed
over completion tokens only, so prompt and padding tokens contribute nothing.

Notation in the docstrings: for a pair (x, y_w, y_l), the log-ratios are
`r_w = log pi(y_w|x) - log pi_ref(y_w|x)` and `r_l = log pi(y_l|x) - log pi_ref(y_l|x)`, the margin is
`Delta = r_w - r_l`, and `sigma` is the logistic function.

Each loss type reproduces `trl.DPOTrainer` (trl 1.16.0) on the same log-probs, and `tests/test_losses.py` checks
this against goldens that `scripts/make_dpo_goldens.py` computed with TRL. One deliberate difference:
`label_smoothing` also turns `sigmoid` into conservative DPO (cDPO). TRL 1.16 ignores `label_smoothing` for
`sigmoid` and applies it only to `robust`, `exo_pair` and `aot`, so with `label_smoothing > 0` our `sigmoid` loss
differs from TRL's. At `label_smoothing = 0` the two agree.

NOTE: equation numbers are given only for DPO (eq. 7, the DPO objective) and IPO (eq. 17, as TRL 1.16's
`dpo_trainer.py` also cites it). The rDPO, SLiC-HF and RPO docstrings name the paper and state the formula, but
their equation numbers were not checked against the papers, so they are left out.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

LOSS_TYPES = ("sigmoid", "robust", "ipo", "hinge", "sigmoid_norm", "sft")


@dataclasses.dataclass(frozen=True)
class DPOLossConfig:
    """Settings of the preference loss.

    Attributes:
        beta: Inverse temperature of the implicit reward `beta * log(pi / pi_ref)`. Larger values keep the policy
            closer to the reference. For `ipo` it is the regularization strength tau of the IPO paper.
        label_smoothing: Assumed probability epsilon that a preference label is flipped, in [0, 0.5). Used by
            `robust` (rDPO) and by `sigmoid` (cDPO); the other loss types ignore it.
        loss_type: Loss types to combine, each one of `LOSS_TYPES`. A single string is read as a one-element tuple.
        loss_weights: Weight of each entry of `loss_type`; `None` gives every entry weight 1.
        reference_free: Take the reference log-probs as zero, so the implicit reward is `beta * log pi`.
    """

    beta: float = 0.1
    label_smoothing: float = 0.0
    loss_type: tuple[str, ...] = ("sigmoid",)
    loss_weights: tuple[float, ...] | None = None
    reference_free: bool = False

    def __post_init__(self) -> None:
        loss_type = (self.loss_type,) if isinstance(self.loss_type, str) else tuple(self.loss_type)
        object.__setattr__(self, "loss_type", loss_type)
        if self.loss_weights is not None:
            object.__setattr__(self, "loss_weights", tuple(float(w) for w in self.loss_weights))

        if not self.loss_type:
            raise ValueError(f"loss_type is empty; give at least one of {LOSS_TYPES}.")
        unknown = [name for name in self.loss_type if name not in LOSS_TYPES]
        if unknown:
            raise ValueError(f"Unknown loss_type {unknown}; expected entries from {LOSS_TYPES}.")
        if not (self.beta > 0.0 and math.isfinite(self.beta)):
            raise ValueError(f"beta must be a finite number > 0, got {self.beta}.")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(
                f"label_smoothing must lie in [0, 0.5), got {self.label_smoothing}. It is the assumed probability "
                "that a preference label is flipped; 0.5 would make the labels carry no information."
            )
        if self.loss_weights is not None:
            if len(self.loss_weights) != len(self.loss_type):
                raise ValueError(
                    f"loss_weights has {len(self.loss_weights)} entries but loss_type has {len(self.loss_type)} "
                    f"({self.loss_type}); give one weight per loss type."
                )
            if not all(math.isfinite(w) for w in self.loss_weights):
                raise ValueError(f"loss_weights must be finite, got {self.loss_weights}.")

    @property
    def weights(self) -> tuple[float, ...]:
        """Weight of each loss type, with the default of 1 filled in."""
        return self.loss_weights if self.loss_weights is not None else (1.0,) * len(self.loss_type)


def sigmoid_loss(margin: jax.Array, beta: float, label_smoothing: float = 0.0) -> jax.Array:
    """Compute the DPO loss per pair, or the conservative DPO (cDPO) loss when `label_smoothing > 0`.

    DPO (Rafailov et al., 2023, "Direct Preference Optimization: Your Language Model is Secretly a Reward Model",
    eq. 7): `-log sigma(beta * Delta)`.
    cDPO (Mitchell, 2023, "A note on DPO with noisy preferences and relationship to IPO") trains on labels that
    are flipped with probability eps: `-(1 - eps) log sigma(beta * Delta) - eps log sigma(-beta * Delta)`.

    Args:
        margin: Delta, the chosen minus rejected log-ratio.  # [batch]
        beta: Inverse temperature of the implicit reward.
        label_smoothing: eps, the assumed flip probability.

    Returns:
        The loss of each pair.  # [batch]
    """
    logits = beta * margin
    return -(1.0 - label_smoothing) * jax.nn.log_sigmoid(logits) - label_smoothing * jax.nn.log_sigmoid(-logits)


def robust_loss(margin: jax.Array, beta: float, label_smoothing: float) -> jax.Array:
    """Compute the robust DPO (rDPO) loss per pair.

    Chowdhury, Kini and Natarajan, 2024, "Provably Robust DPO: Aligning Language Models with Noisy Feedback"
    (arXiv 2403.00409). With flip probability eps < 1/2, the loss
    `[(1 - eps) * l(Delta) - eps * l(-Delta)] / (1 - 2 eps)` with `l(z) = -log sigma(beta * z)` is an unbiased
    estimate of the DPO loss on the clean labels. Unlike cDPO it can be negative.

    Args:
        margin: Delta, the chosen minus rejected log-ratio.  # [batch]
        beta: Inverse temperature of the implicit reward.
        label_smoothing: eps, the assumed flip probability, in [0, 0.5).

    Returns:
        The loss of each pair.  # [batch]
    """
    logits = beta * margin
    clean = -jax.nn.log_sigmoid(logits)
    flipped = -jax.nn.log_sigmoid(-logits)
    return ((1.0 - label_smoothing) * clean - label_smoothing * flipped) / (1.0 - 2.0 * label_smoothing)


def hinge_loss(margin: jax.Array, beta: float) -> jax.Array:
    """Compute the SLiC hinge loss per pair: `max(0, 1 - beta * Delta)`.

    Zhao et al., 2023, "SLiC-HF: Sequence Likelihood Calibration with Human Feedback" (arXiv 2305.10425), rank
    calibration loss with margin 1/beta, applied to the reference-adjusted log-ratios as TRL's `hinge` does. The
    paper's added cross-entropy regularizer is not part of this term; combine with `sft` to add one.

    Args:
        margin: Delta, the chosen minus rejected log-ratio.  # [batch]
        beta: Inverse of the required margin.

    Returns:
        The loss of each pair.  # [batch]
    """
    return jax.nn.relu(1.0 - beta * margin)


def ipo_loss(
    chosen_logratios: jax.Array,
    rejected_logratios: jax.Array,
    chosen_lengths: jax.Array,
    rejected_lengths: jax.Array,
    beta: float,
) -> jax.Array:
    """Compute the IPO loss per pair on length-normalised log-ratios.

    Azar et al., 2023, "A General Theoretical Paradigm to Understand Learning from Human Preferences"
    (arXiv 2310.12036), eq. 17: `(h - 1 / (2 tau))^2` with tau = beta. As in TRL, h uses per-token averages,
    `h = r_w / |y_w| - r_l / |y_l|`, so that the target margin does not scale with completion length.

    Args:
        chosen_logratios: r_w.  # [batch]
        rejected_logratios: r_l.  # [batch]
        chosen_lengths: Completion tokens of y_w; values below 1 count as 1.  # [batch]
        rejected_lengths: Completion tokens of y_l; values below 1 count as 1.  # [batch]
        beta: The regularization strength tau.

    Returns:
        The loss of each pair.  # [batch]
    """
    normalised_margin = _per_token(chosen_logratios, chosen_lengths) - _per_token(rejected_logratios, rejected_lengths)
    return (normalised_margin - 1.0 / (2.0 * beta)) ** 2


def sigmoid_norm_loss(
    chosen_logratios: jax.Array,
    rejected_logratios: jax.Array,
    chosen_lengths: jax.Array,
    rejected_lengths: jax.Array,
    beta: float,
) -> jax.Array:
    """Compute the length-normalised DPO loss per pair: `-log sigma(beta * (r_w / |y_w| - r_l / |y_l|))`.

    DPO (Rafailov et al., 2023, eq. 7) with each log-ratio averaged over its completion tokens, as TRL's
    `sigmoid_norm`; this removes DPO's pull toward longer completions. `label_smoothing` is not applied.

    Args:
        chosen_logratios: r_w.  # [batch]
        rejected_logratios: r_l.  # [batch]
        chosen_lengths: Completion tokens of y_w; values below 1 count as 1.  # [batch]
        rejected_lengths: Completion tokens of y_l; values below 1 count as 1.  # [batch]
        beta: Inverse temperature of the implicit reward.

    Returns:
        The loss of each pair.  # [batch]
    """
    normalised_margin = _per_token(chosen_logratios, chosen_lengths) - _per_token(rejected_logratios, rejected_lengths)
    return -jax.nn.log_sigmoid(beta * normalised_margin)


def sft_loss(policy_chosen_logps: jax.Array, chosen_lengths: jax.Array, pair_weights: jax.Array) -> jax.Array:
    """Compute the negative log-likelihood of the chosen completions per token, over the whole batch.

    Pang et al., 2024, "Iterative Reasoning Preference Optimization" (arXiv 2404.19733) add an NLL term on the
    chosen completion to DPO and find it crucial for reasoning. As in TRL's `sft` loss type, this term is the mean
    over all chosen completion tokens of the batch, `-sum_i w_i log pi(y_w,i) / sum_i w_i |y_w,i|`. It equals the
    mean of per-pair length-normalised NLLs only when all chosen completions have the same length.

    Args:
        policy_chosen_logps: log pi(y_w|x), summed over completion tokens.  # [batch]
        chosen_lengths: Completion tokens of y_w.  # [batch]
        pair_weights: Weight of each pair; 0 drops a padding row.  # [batch]

    Returns:
        The scalar loss; 0 when the weighted token count is 0.
    """
    token_count = jnp.sum(pair_weights * chosen_lengths)
    total_nll = -jnp.sum(pair_weights * policy_chosen_logps)
    return jnp.where(token_count > 0, total_nll / jnp.maximum(token_count, 1e-9), 0.0)


def dpo_loss(
    policy_chosen_logps: jax.Array,
    policy_rejected_logps: jax.Array,
    reference_chosen_logps: jax.Array | None,
    reference_rejected_logps: jax.Array | None,
    chosen_lengths: jax.Array,
    rejected_lengths: jax.Array,
    config: DPOLossConfig,
    pair_weights: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Combine the configured loss types into one scalar loss and compute the standard DPO metrics.

    The total is `sum_k weight_k * L_k`, where each per-pair loss L_k is averaged over the batch with
    `pair_weights`; the `sft` term is already a batch-level token mean. With all weights 1 this equals
    `trl.DPOTrainer`'s loss (see the module docstring for the `label_smoothing` difference). Inputs are cast to
    float32.

    Args:
        policy_chosen_logps: log pi(y_w|x) summed over completion tokens.  # [batch]
        policy_rejected_logps: log pi(y_l|x) summed over completion tokens.  # [batch]
        reference_chosen_logps: log pi_ref(y_w|x); may be `None` when `config.reference_free`.  # [batch]
        reference_rejected_logps: log pi_ref(y_l|x); may be `None` when `config.reference_free`.  # [batch]
        chosen_lengths: Completion tokens of y_w.  # [batch]
        rejected_lengths: Completion tokens of y_l.  # [batch]
        config: Loss settings.
        pair_weights: Non-negative weight of each pair, e.g. a 0/1 mask that drops padding rows; `None` weighs
            every pair 1.  # [batch]

    Returns:
        The scalar loss and a dict of scalar metrics: `rewards/chosen`, `rewards/rejected`, `rewards/margins`,
        `rewards/accuracies`, `logps/chosen`, `logps/rejected` (weighted batch means, rewards being
        `beta * log-ratio`), and `loss/<type>` for each configured loss type before its weight is applied.

    Raises:
        ValueError: If the arrays are not 1-D of one length, or reference log-probs are missing while
            `config.reference_free` is False.
    """
    policy_chosen_logps = jnp.asarray(policy_chosen_logps, jnp.float32)
    policy_rejected_logps = jnp.asarray(policy_rejected_logps, jnp.float32)
    chosen_lengths = jnp.asarray(chosen_lengths, jnp.float32)
    rejected_lengths = jnp.asarray(rejected_lengths, jnp.float32)
    if config.reference_free:
        reference_chosen_logps = jnp.zeros_like(policy_chosen_logps)
        reference_rejected_logps = jnp.zeros_like(policy_rejected_logps)
    elif reference_chosen_logps is None or reference_rejected_logps is None:
        raise ValueError(
            "reference_chosen_logps and reference_rejected_logps are required unless config.reference_free is True."
        )
    reference_chosen_logps = jnp.asarray(reference_chosen_logps, jnp.float32)
    reference_rejected_logps = jnp.asarray(reference_rejected_logps, jnp.float32)
    if pair_weights is None:
        pair_weights = jnp.ones_like(policy_chosen_logps)
    pair_weights = jnp.asarray(pair_weights, jnp.float32)
    _check_pair_shapes(
        policy_chosen_logps=policy_chosen_logps,
        policy_rejected_logps=policy_rejected_logps,
        reference_chosen_logps=reference_chosen_logps,
        reference_rejected_logps=reference_rejected_logps,
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
        pair_weights=pair_weights,
    )

    chosen_logratios = policy_chosen_logps - reference_chosen_logps  # [batch]
    rejected_logratios = policy_rejected_logps - reference_rejected_logps  # [batch]
    margin = chosen_logratios - rejected_logratios  # [batch]

    total = jnp.zeros((), jnp.float32)
    metrics: dict[str, jax.Array] = {}
    for loss_type, weight in zip(config.loss_type, config.weights, strict=True):
        if loss_type == "sft":
            term = sft_loss(policy_chosen_logps, chosen_lengths, pair_weights)
        else:
            per_pair = _per_pair_loss(
                loss_type, margin, chosen_logratios, rejected_logratios, chosen_lengths, rejected_lengths, config
            )
            term = weighted_mean(per_pair, pair_weights)
        metrics[f"loss/{loss_type}"] = term
        total = total + weight * term

    chosen_rewards = jax.lax.stop_gradient(config.beta * chosen_logratios)
    rejected_rewards = jax.lax.stop_gradient(config.beta * rejected_logratios)
    metrics["rewards/chosen"] = weighted_mean(chosen_rewards, pair_weights)
    metrics["rewards/rejected"] = weighted_mean(rejected_rewards, pair_weights)
    metrics["rewards/margins"] = weighted_mean(chosen_rewards - rejected_rewards, pair_weights)
    metrics["rewards/accuracies"] = weighted_mean(
        (chosen_rewards > rejected_rewards).astype(jnp.float32), pair_weights
    )
    metrics["logps/chosen"] = weighted_mean(jax.lax.stop_gradient(policy_chosen_logps), pair_weights)
    metrics["logps/rejected"] = weighted_mean(jax.lax.stop_gradient(policy_rejected_logps), pair_weights)
    return total, metrics


def weighted_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    """Return `sum(w * v) / sum(w)`, or 0 when the weights sum to 0 (a batch made only of padding)."""
    weight_sum = jnp.sum(weights)
    return jnp.where(weight_sum > 0, jnp.sum(weights * values) / jnp.maximum(weight_sum, 1e-9), 0.0)


def _per_pair_loss(
    loss_type: str,
    margin: jax.Array,
    chosen_logratios: jax.Array,
    rejected_logratios: jax.Array,
    chosen_lengths: jax.Array,
    rejected_lengths: jax.Array,
    config: DPOLossConfig,
) -> jax.Array:
    if loss_type == "sigmoid":
        return sigmoid_loss(margin, config.beta, config.label_smoothing)
    if loss_type == "robust":
        return robust_loss(margin, config.beta, config.label_smoothing)
    if loss_type == "hinge":
        return hinge_loss(margin, config.beta)
    if loss_type == "ipo":
        return ipo_loss(chosen_logratios, rejected_logratios, chosen_lengths, rejected_lengths, config.beta)
    if loss_type == "sigmoid_norm":
        return sigmoid_norm_loss(chosen_logratios, rejected_logratios, chosen_lengths, rejected_lengths, config.beta)
    raise ValueError(f"Unknown loss_type {loss_type!r}; expected one of {LOSS_TYPES}.")


def _per_token(logratios: jax.Array, lengths: jax.Array) -> jax.Array:
    return logratios / jnp.maximum(lengths, 1.0)


def _check_pair_shapes(**arrays: jax.Array) -> None:
    shapes = {name: tuple(array.shape) for name, array in arrays.items()}
    first = next(iter(shapes.values()))
    if len(first) != 1 or any(shape != first for shape in shapes.values()):
        raise ValueError(f"dpo_loss expects 1-D arrays of one length [batch], got shapes {shapes}.")


__all__: Sequence[str] = (
    "LOSS_TYPES",
    "DPOLossConfig",
    "dpo_loss",
    "hinge_loss",
    "ipo_loss",
    "robust_loss",
    "sft_loss",
    "sigmoid_loss",
    "sigmoid_norm_loss",
    "weighted_mean",
)
