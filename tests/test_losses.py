"""Tests of sphere_jax.training.losses against goldens computed by TRL's DPOTrainer (scripts/make_dpo_goldens.py)."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sphere_jax.training.losses import LOSS_TYPES, DPOLossConfig, dpo_loss, sigmoid_loss

GOLDENS_PATH = Path(__file__).parent / "data" / "dpo_loss_goldens.json"
GOLDENS = json.loads(GOLDENS_PATH.read_text())
CASES = {case["name"]: case for case in GOLDENS["cases"]}
# float32 arithmetic against float64 goldens; log-probs reach -900, so allow a small absolute slack too.
RTOL = 1e-5
ATOL = 1e-5


def config_of(case: dict) -> DPOLossConfig:
    config = case["config"]
    return DPOLossConfig(
        beta=config["beta"],
        label_smoothing=config["label_smoothing"],
        loss_type=tuple(config["loss_type"]),
        loss_weights=None if config["loss_weights"] is None else tuple(config["loss_weights"]),
        reference_free=config["reference_free"],
    )


def arrays_of(inputs: dict) -> dict[str, np.ndarray]:
    return {name: np.asarray(values, dtype=np.float64) for name, values in inputs.items()}


def call_loss(arrays: dict[str, np.ndarray], config: DPOLossConfig, pair_weights=None):
    return dpo_loss(
        arrays["policy_chosen_logps"],
        arrays["policy_rejected_logps"],
        arrays["reference_chosen_logps"],
        arrays["reference_rejected_logps"],
        arrays["chosen_lengths"],
        arrays["rejected_lengths"],
        config,
        pair_weights=pair_weights,
    )


def test_goldens_come_from_pinned_trl():
    assert GOLDENS["trl_version"] == "1.16.0"
    assert GOLDENS["generated_by"] == "scripts/make_dpo_goldens.py"


def test_goldens_cover_every_loss_type():
    covered = {name for case in GOLDENS["cases"] for name in case["config"]["loss_type"]}
    assert covered == set(LOSS_TYPES)


# cDPO label smoothing on `sigmoid` is where we differ from TRL 1.16; it is checked separately below.
TRL_MATCHING_CASES = [name for name in CASES if name != "sigmoid_label_smoothing_0.1"]


@pytest.mark.parametrize("name", TRL_MATCHING_CASES)
def test_loss_matches_trl(name):
    case = CASES[name]
    loss, _ = call_loss(arrays_of(GOLDENS["inputs"][case["inputs"]]), config_of(case))
    np.testing.assert_allclose(float(loss), case["loss"], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", TRL_MATCHING_CASES)
def test_metrics_match_trl(name):
    case = CASES[name]
    _, metrics = call_loss(arrays_of(GOLDENS["inputs"][case["inputs"]]), config_of(case))
    for metric_name, expected in case["metrics"].items():
        np.testing.assert_allclose(
            float(metrics[metric_name]), expected, rtol=RTOL, atol=ATOL, err_msg=metric_name
        )


def test_cdpo_differs_from_trl_sigmoid():
    """TRL 1.16 ignores label_smoothing for `sigmoid`; we apply cDPO, so the loss must move away from TRL's."""
    case = CASES["sigmoid_label_smoothing_0.1"]
    arrays = arrays_of(GOLDENS["inputs"][case["inputs"]])
    loss, _ = call_loss(arrays, config_of(case))

    assert case["loss"] == pytest.approx(CASES["sigmoid"]["loss"], rel=1e-12)
    assert abs(float(loss) - case["loss"]) > 1e-3


def test_cdpo_matches_closed_form():
    arrays = arrays_of(GOLDENS["inputs"]["moderate"])
    beta, epsilon = 0.1, 0.1
    loss, _ = call_loss(arrays, DPOLossConfig(beta=beta, label_smoothing=epsilon))

    margin = (arrays["policy_chosen_logps"] - arrays["reference_chosen_logps"]) - (
        arrays["policy_rejected_logps"] - arrays["reference_rejected_logps"]
    )
    log_sigmoid = lambda z: -np.logaddexp(0.0, -z)  # noqa: E731
    expected = np.mean(-(1 - epsilon) * log_sigmoid(beta * margin) - epsilon * log_sigmoid(-beta * margin))
    np.testing.assert_allclose(float(loss), expected, rtol=RTOL)


def test_cdpo_at_zero_smoothing_is_dpo():
    margin = jnp.array([-30.0, -1.0, 0.0, 2.5, 40.0])
    np.testing.assert_allclose(sigmoid_loss(margin, 0.1, 0.0), -jax.nn.log_sigmoid(0.1 * margin), rtol=1e-6)


def test_padding_rows_with_zero_weight_change_nothing():
    case = CASES["weighted_mix"]
    arrays = arrays_of(GOLDENS["inputs"][case["inputs"]])
    config = DPOLossConfig(
        beta=0.1, loss_type=("sigmoid", "robust", "ipo", "hinge", "sigmoid_norm", "sft"), label_smoothing=0.1
    )
    loss, metrics = call_loss(arrays, config)

    padded = {name: np.concatenate([values, np.array([-1e4, 0.0, 3.0])]) for name, values in arrays.items()}
    pair_weights = np.concatenate([np.ones(len(arrays["chosen_lengths"])), np.zeros(3)])
    padded_loss, padded_metrics = call_loss(padded, config, pair_weights=pair_weights)

    np.testing.assert_allclose(float(padded_loss), float(loss), rtol=1e-6)
    for name, value in metrics.items():
        np.testing.assert_allclose(float(padded_metrics[name]), float(value), rtol=1e-6, atol=1e-7, err_msg=name)


def test_pair_weights_scale_each_pair():
    arrays = arrays_of(GOLDENS["inputs"]["moderate"])
    pair_weights = np.array([2.0, 0.5, 1.0, 0.0, 3.0, 1.0, 1.0, 0.25])
    config = DPOLossConfig(beta=0.1, loss_type=("sigmoid",))
    loss, metrics = call_loss(arrays, config, pair_weights=pair_weights)

    margin = (arrays["policy_chosen_logps"] - arrays["reference_chosen_logps"]) - (
        arrays["policy_rejected_logps"] - arrays["reference_rejected_logps"]
    )
    per_pair = np.logaddexp(0.0, -0.1 * margin)
    np.testing.assert_allclose(float(loss), np.sum(pair_weights * per_pair) / pair_weights.sum(), rtol=RTOL)
    expected_logps = np.sum(pair_weights * arrays["policy_chosen_logps"]) / pair_weights.sum()
    np.testing.assert_allclose(float(metrics["logps/chosen"]), expected_logps, rtol=RTOL)


def test_all_padding_batch_gives_zero_loss():
    arrays = arrays_of(GOLDENS["inputs"]["moderate"])
    config = DPOLossConfig(loss_type=("sigmoid", "sft"))
    loss, metrics = call_loss(arrays, config, pair_weights=np.zeros(len(arrays["chosen_lengths"])))

    assert float(loss) == 0.0
    assert all(np.isfinite(float(value)) for value in metrics.values())


def test_reference_free_ignores_reference_arrays():
    arrays = arrays_of(GOLDENS["inputs"]["moderate"])
    config = DPOLossConfig(reference_free=True)
    loss_with, _ = call_loss(arrays, config)
    loss_without, _ = dpo_loss(
        arrays["policy_chosen_logps"],
        arrays["policy_rejected_logps"],
        None,
        None,
        arrays["chosen_lengths"],
        arrays["rejected_lengths"],
        config,
    )

    np.testing.assert_allclose(float(loss_with), CASES["sigmoid_reference_free"]["loss"], rtol=RTOL)
    assert float(loss_without) == float(loss_with)


def test_missing_reference_raises():
    arrays = arrays_of(GOLDENS["inputs"]["moderate"])
    with pytest.raises(ValueError, match="reference_free"):
        dpo_loss(
            arrays["policy_chosen_logps"],
            arrays["policy_rejected_logps"],
            None,
            None,
            arrays["chosen_lengths"],
            arrays["rejected_lengths"],
            DPOLossConfig(),
        )


def test_mismatched_shapes_raise():
    arrays = arrays_of(GOLDENS["inputs"]["moderate"])
    arrays["rejected_lengths"] = arrays["rejected_lengths"][:-1]
    with pytest.raises(ValueError, match="rejected_lengths"):
        call_loss(arrays, DPOLossConfig())


def test_loss_is_jittable_with_finite_gradients():
    arrays = {name: jnp.asarray(values, jnp.float32) for name, values in GOLDENS["inputs"]["extreme"].items()}
    config = DPOLossConfig(
        beta=0.1, loss_type=("sigmoid", "robust", "ipo", "hinge", "sigmoid_norm", "sft"), label_smoothing=0.2
    )

    def loss_of_policy(chosen, rejected):
        loss, _ = dpo_loss(
            chosen,
            rejected,
            arrays["reference_chosen_logps"],
            arrays["reference_rejected_logps"],
            arrays["chosen_lengths"],
            arrays["rejected_lengths"],
            config,
        )
        return loss

    loss, (grad_chosen, grad_rejected) = jax.jit(jax.value_and_grad(loss_of_policy, argnums=(0, 1)))(
        arrays["policy_chosen_logps"], arrays["policy_rejected_logps"]
    )

    assert np.isfinite(float(loss))
    assert np.all(np.isfinite(np.asarray(grad_chosen)))
    assert np.all(np.isfinite(np.asarray(grad_rejected)))


def test_dpo_gradient_matches_analytic_form():
    """d/d logp_w of -log sigma(beta * Delta) is -beta * sigma(-beta * Delta), averaged over the batch."""
    arrays = arrays_of(GOLDENS["inputs"]["moderate"])
    config = DPOLossConfig(beta=0.1)
    batch_size = len(arrays["chosen_lengths"])

    def loss_of_chosen(chosen):
        loss, _ = dpo_loss(
            chosen,
            arrays["policy_rejected_logps"],
            arrays["reference_chosen_logps"],
            arrays["reference_rejected_logps"],
            arrays["chosen_lengths"],
            arrays["rejected_lengths"],
            config,
        )
        return loss

    gradient = jax.grad(loss_of_chosen)(jnp.asarray(arrays["policy_chosen_logps"], jnp.float32))
    margin = (arrays["policy_chosen_logps"] - arrays["reference_chosen_logps"]) - (
        arrays["policy_rejected_logps"] - arrays["reference_rejected_logps"]
    )
    expected = -0.1 / (1.0 + np.exp(0.1 * margin)) / batch_size
    np.testing.assert_allclose(np.asarray(gradient), expected, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"loss_type": ("dpo",)}, "Unknown loss_type"),
        ({"loss_type": ()}, "empty"),
        ({"beta": 0.0}, "beta"),
        ({"beta": float("nan")}, "beta"),
        ({"label_smoothing": 0.5}, "label_smoothing"),
        ({"label_smoothing": -0.1}, "label_smoothing"),
        ({"loss_type": ("sigmoid", "sft"), "loss_weights": (1.0,)}, "one weight per loss type"),
        ({"loss_weights": (float("inf"),)}, "finite"),
    ],
)
def test_config_rejects_invalid_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DPOLossConfig(**kwargs)


def test_config_reads_string_as_one_loss_type():
    config = DPOLossConfig(loss_type="ipo", loss_weights=[2])
    assert config.loss_type == ("ipo",)
    assert config.weights == (2.0,)


def test_metrics_have_standard_names():
    arrays = arrays_of(GOLDENS["inputs"]["moderate"])
    _, metrics = call_loss(arrays, DPOLossConfig(loss_type=("sigmoid", "sft")))
    assert set(metrics) == {
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
        "loss/sigmoid",
        "loss/sft",
    }
