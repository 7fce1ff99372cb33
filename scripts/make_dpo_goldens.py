"""Write golden DPO loss values computed by TRL's own `DPOTrainer` to tests/data/dpo_loss_goldens.json.

For each case the script builds a real `trl.DPOTrainer` from a tiny random Llama config, a word-level tokenizer
built in memory and a one-row dataset, so nothing is downloaded. It then calls the trainer's `_compute_loss` on a
batch whose per-token log-probabilities are fixed. A stub stands in for the policy forward pass so that TRL sums exactly the
per-token log-probabilities written here, and the reference log-probabilities enter through TRL's precomputed
`ref_chosen_logps` / `ref_rejected_logps` batch fields. Everything after the forward pass (log-ratios, every loss
type, the weighted sum over loss types, the reward metrics) is TRL's code.

The tensors are float64, so the goldens carry no float32 rounding. `tests/test_losses.py` compares
`sphere_jax.training.losses` against this file and does not import TRL or torch.

Usage (needs the test extra, which pins trl==1.16.0):

    python scripts/make_dpo_goldens.py [--output tests/data/dpo_loss_goldens.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import types
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402

logger = logging.getLogger("make_dpo_goldens")

EXPECTED_TRL_VERSION = "1.16.0"
DEFAULT_OUTPUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "dpo_loss_goldens.json"
METRIC_NAMES = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
)


# Log-probs are multiples of 2**-10, and so is every per-token share of them. Sums of such values below 2**13 in
# magnitude are exact in float32 and float64, so TRL sums back exactly the values written to the JSON, and a tie
# between two log-probs stays a tie in any summation order.
GRID = 1024


def to_grid(values: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(values, dtype=np.float64) * GRID) / GRID


def make_moderate_batch(rng: np.random.Generator) -> dict[str, list[float]]:
    """Return 8 preference pairs with realistic summed log-probs and completion lengths of 1 to 40 tokens."""
    batch_size = 8
    chosen_lengths = rng.integers(1, 41, size=batch_size)  # [batch]
    rejected_lengths = rng.integers(1, 41, size=batch_size)  # [batch]
    reference_chosen = -rng.uniform(0.3, 2.5, size=batch_size) * chosen_lengths
    reference_rejected = -rng.uniform(0.3, 2.5, size=batch_size) * rejected_lengths
    # A log-prob is at most 0; keep at least 0.05 nats per token.
    policy_chosen = np.minimum(reference_chosen + rng.normal(0.0, 4.0, size=batch_size), -0.05 * chosen_lengths)
    policy_rejected = np.minimum(reference_rejected + rng.normal(0.0, 4.0, size=batch_size), -0.05 * rejected_lengths)
    return {
        "policy_chosen_logps": to_grid(policy_chosen).tolist(),
        "policy_rejected_logps": to_grid(policy_rejected).tolist(),
        "reference_chosen_logps": to_grid(reference_chosen).tolist(),
        "reference_rejected_logps": to_grid(reference_rejected).tolist(),
        "chosen_lengths": chosen_lengths.tolist(),
        "rejected_lengths": rejected_lengths.tolist(),
    }


def make_extreme_batch() -> dict[str, list[float]]:
    """Return 4 pairs whose log-ratio margins reach +-600 nats, to check that no loss overflows."""
    return {
        "policy_chosen_logps": [-5.0, -900.0, -40.0, -12.0],
        "policy_rejected_logps": [-900.0, -5.0, -40.0, -300.0],
        "reference_chosen_logps": [-300.0, -300.0, -40.0, -10.0],
        "reference_rejected_logps": [-300.0, -300.0, -40.0, -20.0],
        "chosen_lengths": [3, 64, 10, 1],
        "rejected_lengths": [64, 3, 10, 60],
    }


# Each case: the DPOConfig fields to set and which input batch to use.
CASES: tuple[dict[str, Any], ...] = (
    {"name": "sigmoid", "inputs": "moderate", "loss_type": ["sigmoid"], "beta": 0.1},
    {"name": "sigmoid_beta_0.5", "inputs": "moderate", "loss_type": ["sigmoid"], "beta": 0.5},
    {"name": "sigmoid_extreme", "inputs": "extreme", "loss_type": ["sigmoid"], "beta": 0.1},
    {"name": "sigmoid_reference_free", "inputs": "moderate", "loss_type": ["sigmoid"], "beta": 0.1,
     "reference_free": True},
    # TRL 1.16 applies label_smoothing only to robust, exo_pair and aot, so this value is plain DPO.
    {"name": "sigmoid_label_smoothing_0.1", "inputs": "moderate", "loss_type": ["sigmoid"], "beta": 0.1,
     "label_smoothing": 0.1},
    {"name": "robust_eps_0.1", "inputs": "moderate", "loss_type": ["robust"], "beta": 0.1, "label_smoothing": 0.1},
    {"name": "robust_eps_0.3", "inputs": "moderate", "loss_type": ["robust"], "beta": 0.2, "label_smoothing": 0.3},
    {"name": "robust_eps_0", "inputs": "moderate", "loss_type": ["robust"], "beta": 0.1},
    {"name": "robust_extreme", "inputs": "extreme", "loss_type": ["robust"], "beta": 0.1, "label_smoothing": 0.2},
    {"name": "ipo", "inputs": "moderate", "loss_type": ["ipo"], "beta": 0.1},
    {"name": "ipo_beta_1.0", "inputs": "moderate", "loss_type": ["ipo"], "beta": 1.0},
    {"name": "ipo_extreme", "inputs": "extreme", "loss_type": ["ipo"], "beta": 0.1},
    {"name": "hinge", "inputs": "moderate", "loss_type": ["hinge"], "beta": 0.1},
    {"name": "hinge_beta_0.5", "inputs": "moderate", "loss_type": ["hinge"], "beta": 0.5},
    {"name": "hinge_extreme", "inputs": "extreme", "loss_type": ["hinge"], "beta": 0.1},
    {"name": "sigmoid_norm", "inputs": "moderate", "loss_type": ["sigmoid_norm"], "beta": 0.1},
    {"name": "sigmoid_norm_beta_2.0", "inputs": "moderate", "loss_type": ["sigmoid_norm"], "beta": 2.0},
    {"name": "sft", "inputs": "moderate", "loss_type": ["sft"], "beta": 0.1},
    {"name": "sft_extreme", "inputs": "extreme", "loss_type": ["sft"], "beta": 0.1},
    {"name": "rpo_sigmoid_plus_sft", "inputs": "moderate", "loss_type": ["sigmoid", "sft"],
     "loss_weights": [1.0, 1.0], "beta": 0.1},
    {"name": "weighted_mix", "inputs": "moderate", "loss_type": ["sigmoid", "hinge", "ipo", "sigmoid_norm"],
     "loss_weights": [0.5, 0.3, 0.15, 0.05], "beta": 0.1},
    {"name": "weighted_mix_reference_free", "inputs": "moderate", "loss_type": ["robust", "sft"],
     "loss_weights": [0.8, 0.2], "beta": 0.05, "label_smoothing": 0.1, "reference_free": True},
)


def build_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """Build a word-level tokenizer in memory, so that nothing is read from a hub."""
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, "question": 3, "answer": 4, "good": 5, "bad": 6}
    model = tokenizers.models.WordLevel(vocab=vocab, unk_token="<unk>")
    backend = tokenizers.Tokenizer(model)
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )


def build_tiny_model() -> transformers.LlamaForCausalLM:
    config = transformers.LlamaConfig(
        vocab_size=8,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=128,
    )
    return transformers.LlamaForCausalLM(config)


def build_trainer(case: dict[str, Any], output_dir: str) -> trl.DPOTrainer:
    """Build a real DPOTrainer whose config carries the case's loss settings."""
    config_kwargs: dict[str, Any] = {
        "output_dir": output_dir,
        "loss_type": list(case["loss_type"]),
        "beta": case["beta"],
        "label_smoothing": case.get("label_smoothing", 0.0),
        "report_to": [],
        "use_cpu": True,
        "bf16": False,
        "fp16": False,
        "per_device_train_batch_size": 1,
        "max_length": 32,
    }
    if "loss_weights" in case:
        config_kwargs["loss_weights"] = list(case["loss_weights"])
    args = trl.DPOConfig(**config_kwargs)
    dataset = datasets.Dataset.from_dict(
        {"prompt": ["question"], "chosen": ["answer good"], "rejected": ["answer bad"]}
    )
    trainer = trl.DPOTrainer(
        model=build_tiny_model(),
        ref_model=build_tiny_model(),
        args=args,
        train_dataset=dataset,
        processing_class=build_tokenizer(),
    )
    # Read the reference log-probs from the batch instead of running the reference model.
    trainer.precompute_ref_logps = True
    trainer.model.train()
    return trainer


class FixedLogProbsModel(torch.nn.Module):
    """Stand-in for the policy forward pass that returns fixed per-token log-probs in TRL's fused-head layout."""

    def __init__(self, per_token_logps: torch.Tensor) -> None:
        super().__init__()
        self.per_token_logps = per_token_logps  # [2 * batch, length - 1]

    def forward(self, **_: Any) -> types.SimpleNamespace:
        shape = self.per_token_logps.shape
        return types.SimpleNamespace(
            log_probs=self.per_token_logps,
            entropy=torch.zeros(shape, dtype=self.per_token_logps.dtype),
            mean_logits=torch.zeros(shape, dtype=self.per_token_logps.dtype),
            is_top1=torch.zeros(shape, dtype=torch.bool),
        )


def build_trl_batch(
    inputs: dict[str, list[float]], reference_free: bool, rng: np.random.Generator
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Lay the summed log-probs out as TRL's padded [chosen; rejected] batch.

    Each summed log-prob is split over its completion tokens in random shares on the 2**-10 grid, so TRL's sum over
    the completion mask recovers it exactly. Every row starts with a prompt of 1 to 3 tokens.
    """
    chosen_lengths = np.asarray(inputs["chosen_lengths"], dtype=np.int64)
    rejected_lengths = np.asarray(inputs["rejected_lengths"], dtype=np.int64)
    lengths = np.concatenate([chosen_lengths, rejected_lengths])  # [2 * batch]
    summed_logps = np.concatenate([inputs["policy_chosen_logps"], inputs["policy_rejected_logps"]])
    rows = lengths.shape[0]
    prompt_lengths = rng.integers(1, 4, size=rows)
    sequence_length = int((prompt_lengths + lengths).max())

    completion_mask = np.zeros((rows, sequence_length), dtype=np.int64)
    per_token_logps = np.zeros((rows, sequence_length - 1), dtype=np.float64)
    for row in range(rows):
        start, stop = prompt_lengths[row], prompt_lengths[row] + lengths[row]
        completion_mask[row, start:stop] = 1
        grid_units = int(round(-summed_logps[row] * GRID))
        if grid_units < 0 or grid_units != -summed_logps[row] * GRID:
            raise ValueError(f"log-prob {summed_logps[row]} is positive or not a multiple of 1/{GRID}")
        shares = rng.multinomial(grid_units, rng.dirichlet(np.ones(lengths[row])))
        # Log-prob position t - 1 scores token t, so completion tokens start..stop-1 sit at start-1..stop-2.
        per_token_logps[row, start - 1 : stop - 1] = -shares / GRID

    attention_mask = np.zeros_like(completion_mask)
    for row in range(rows):
        attention_mask[row, : prompt_lengths[row] + lengths[row]] = 1

    if reference_free:
        reference_chosen = np.zeros(len(chosen_lengths))
        reference_rejected = np.zeros(len(rejected_lengths))
    else:
        reference_chosen = np.asarray(inputs["reference_chosen_logps"])
        reference_rejected = np.asarray(inputs["reference_rejected_logps"])
    batch = {
        "input_ids": torch.zeros((rows, sequence_length), dtype=torch.long),
        "attention_mask": torch.from_numpy(attention_mask),
        "completion_mask": torch.from_numpy(completion_mask),
        "ref_chosen_logps": torch.from_numpy(reference_chosen),
        "ref_rejected_logps": torch.from_numpy(reference_rejected),
    }
    return batch, torch.from_numpy(per_token_logps)


def run_case(case: dict[str, Any], inputs: dict[str, list[float]], output_dir: str, seed: int) -> dict[str, Any]:
    trainer = build_trainer(case, output_dir)
    reference_free = case.get("reference_free", False)
    batch, per_token_logps = build_trl_batch(inputs, reference_free, np.random.default_rng(seed))
    with torch.no_grad():
        loss = trainer._compute_loss(FixedLogProbsModel(per_token_logps), batch, return_outputs=False)
    metrics = {name: float(trainer._metrics["train"][name][-1]) for name in METRIC_NAMES}
    return {
        "name": case["name"],
        "inputs": case["inputs"],
        "config": {
            "beta": case["beta"],
            "label_smoothing": case.get("label_smoothing", 0.0),
            "loss_type": list(case["loss_type"]),
            "loss_weights": case.get("loss_weights"),
            "reference_free": reference_free,
        },
        "loss": float(loss),
        "metrics": metrics,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON file to write")
    parser.add_argument("--seed", type=int, default=20240601, help="seed for the random input batch")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    transformers.logging.set_verbosity_error()
    # TrainingArguments warns about its own deprecated fields on every DPOConfig; they do not affect the loss.
    warnings.filterwarnings("ignore", category=FutureWarning)
    datasets.disable_progress_bars()

    if trl.__version__ != EXPECTED_TRL_VERSION:
        raise SystemExit(
            f"trl {trl.__version__} is installed but the goldens are pinned to trl {EXPECTED_TRL_VERSION}; "
            f"install the test extra (pip install -e '.[test]') before regenerating."
        )
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    inputs = {"moderate": make_moderate_batch(rng), "extreme": make_extreme_batch()}

    results = []
    with tempfile.TemporaryDirectory() as output_dir:
        for index, case in enumerate(CASES):
            result = run_case(case, inputs[case["inputs"]], output_dir, seed=args.seed + index)
            logger.info("%-32s loss=%.10g", result["name"], result["loss"])
            results.append(result)

    document = {
        "generated_by": "scripts/make_dpo_goldens.py",
        "source": "trl.DPOTrainer._compute_loss on fixed float64 per-token log-probs",
        "trl_version": trl.__version__,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "inputs": inputs,
        "cases": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=1) + "\n")
    logger.info("wrote %d cases to %s", len(results), args.output)


if __name__ == "__main__":
    main()
