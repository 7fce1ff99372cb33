"""DPO trainer: one jitted, sharded train step with gradient accumulation, reference log-probs and checkpoints.

The policy is split once with `nnx.split` into a graph definition and its parameters. The parameters travel as a
plain nested dict of arrays, sharded by their logical axes. The step differentiates a pure function of that dict,
which rebuilds the module inside `jit` with `nnx.merge`. The optimizer state, the checkpoints and the step's
`in_shardings`/`out_shardings` all use the same dict structure.

The reference model is either precomputed (default): one no-grad pass over all pairs before training stores
`log pi_ref` of every completion beside the pairs file, so the reference weights are not kept in memory during
training; or live: a frozen copy of the reference parameters runs a second forward inside every step.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sphere_jax.models.logprobs import chunked_token_logprobs
from sphere_jax.models.sharding import state_shardings
from sphere_jax.models.transformer import positions_from_mask
from sphere_jax.training import pairs as pairs_lib
from sphere_jax.training.checkpointing import (
    CheckpointConfig,
    TrainingCheckpoint,
    TrainingCheckpointer,
    check_finite,
    optimizer_state_target,
    restore_target,
)
from sphere_jax.training.losses import DPOLossConfig, dpo_loss
from sphere_jax.training.mesh import BATCH_AXES, batch_sharding, make_mesh, put_global, shard_batch
from sphere_jax.training.schedule import OptimizerConfig, make_optimizer

logger = logging.getLogger(__name__)

ReferenceMode = Literal["precomputed", "live"]
REFERENCE_MODES: tuple[ReferenceMode, ...] = ("precomputed", "live")
# Bumped when the stored reference log-probs change meaning, so older files are recomputed.
REFERENCE_LOGPS_FORMAT = 1

Params = dict[str, Any]
Batch = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class DPOTrainerConfig:
    """Settings of a DPO run.

    Attributes:
        loss: Preference loss settings.
        optimizer: AdamW and learning-rate schedule settings; `optimizer.total_steps` sets the schedule length.
        batch_size: Preference pairs per optimizer step.
        gradient_accumulation_steps: Micro-batches per optimizer step. `batch_size` must be a multiple of it, and
            the pairs of each micro-batch (`batch_size / gradient_accumulation_steps`) must be a multiple of the
            devices on the mesh axes data x fsdp.
        max_length: Maximum tokens of prompt plus completion; longer pairs are truncated (see
            `pairs.truncate_pair`).
        length_bucket: Batches are padded to a multiple of this many tokens, so that few distinct shapes compile.
        reference: "precomputed" stores the reference log-probs beside the pairs file before training; "live"
            keeps a frozen reference model and runs it in every step.
        reference_batch_size: Pairs per batch of the precomputing pass (no gradients, so it can be larger).
        reference_id: Name of the reference model, stored with precomputed log-probs so that a file made with
            another reference is recomputed instead of reused.
        remat: Recompute each decoder block's activations in the backward pass, trading compute for memory.
        logprob_chunk_size: Sequence positions per block of the chunked log-softmax.
        seed: Seed of the epoch permutations and of the PRNG key.
        mesh_shape: Mesh axis sizes for `mesh.make_mesh` when no mesh is passed; `None` puts all devices on fsdp.
        checkpoint: Where and how often to save; `None` disables checkpoints.
        log_every: Log metrics every this many steps.
    """

    loss: DPOLossConfig = DPOLossConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_length: int = 1024
    length_bucket: int = 64
    reference: ReferenceMode = "precomputed"
    reference_batch_size: int = 32
    reference_id: str = ""
    remat: bool = True
    logprob_chunk_size: int = 128
    seed: int = 0
    mesh_shape: Mapping[str, int] | None = None
    checkpoint: CheckpointConfig | None = None
    log_every: int = 1

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}.")
        if self.gradient_accumulation_steps < 1:
            raise ValueError(f"gradient_accumulation_steps must be >= 1, got {self.gradient_accumulation_steps}.")
        if self.batch_size % self.gradient_accumulation_steps:
            raise ValueError(
                f"batch_size={self.batch_size} is not a multiple of gradient_accumulation_steps="
                f"{self.gradient_accumulation_steps}; every micro-batch must have the same number of pairs."
            )
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}.")
        if self.length_bucket < 1:
            raise ValueError(f"length_bucket must be >= 1, got {self.length_bucket}.")
        if self.reference not in REFERENCE_MODES:
            raise ValueError(f"Unknown reference mode {self.reference!r}; expected one of {REFERENCE_MODES}.")
        if self.reference_batch_size < 1:
            raise ValueError(f"reference_batch_size must be >= 1, got {self.reference_batch_size}.")
        if self.logprob_chunk_size < 1:
            raise ValueError(f"logprob_chunk_size must be >= 1, got {self.logprob_chunk_size}.")
        if self.log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {self.log_every}.")
        if self.loss.reference_free and self.reference == "live":
            raise ValueError("loss.reference_free ignores the reference; use reference='precomputed' with it.")

    @property
    def micro_batch_size(self) -> int:
        """Pairs per micro-batch."""
        return self.batch_size // self.gradient_accumulation_steps


# ---- Pure functions of the step ----------------------------------------------------------------------------------


def completion_logps(
    model: nnx.Module,
    tokens: jax.Array,  # [pairs, 2, length] int32
    valid: jax.Array,  # [pairs, 2, length] bool
    loss_mask: jax.Array,  # [pairs, 2, length] bool
    hidden_positions: jax.Array,  # [pairs, 2, window] int32
    chunk_size: int,
    remat: bool,
) -> jax.Array:
    """Return the summed completion log-probs `[pairs, 2]` of chosen (0) and rejected (1), in one forward.

    The decoder runs over whole sequences, but the output projection and log-softmax run only on the completion
    window that `hidden_positions` selects (see `pairs.completion_hidden_positions`), not on prompt positions.
    """
    pairs, _, length = tokens.shape
    window = hidden_positions.shape[-1]
    tokens = tokens.reshape(2 * pairs, length)
    valid = valid.reshape(2 * pairs, length)
    loss_mask = loss_mask.reshape(2 * pairs, length)
    hidden_positions = hidden_positions.reshape(2 * pairs, window)

    hidden, _ = model.hidden_states(tokens, positions_from_mask(valid), valid, remat=remat)  # [2 * pairs, length, E]
    window_hidden = jnp.take_along_axis(hidden, hidden_positions[..., None], axis=1)  # [2 * pairs, window, E]
    targets = jnp.take_along_axis(tokens, hidden_positions + 1, axis=1)  # [2 * pairs, window]
    completion_lengths = jnp.sum(loss_mask, axis=-1)  # [2 * pairs]
    in_completion = jnp.arange(window)[None, :] < completion_lengths[:, None]  # [2 * pairs, window]
    token_logps = chunked_token_logprobs(window_hidden, model.output_embedding(), targets, chunk_size)
    summed = jnp.sum(jnp.where(in_completion, token_logps, 0.0), axis=-1)
    return summed.reshape(pairs, 2)


def accumulate_gradients(
    loss_fn: Callable[[Params, Batch], tuple[jax.Array, dict[str, jax.Array]]],
    params: Params,
    micro_batches: Batch,
) -> tuple[dict[str, jax.Array], Params]:
    """Compute the loss, metrics and gradients of a batch split into micro-batches, one micro-batch at a time.

    `loss_fn(params, micro_batch)` returns a loss that is a `pair_weights`-weighted mean over the micro-batch's
    pairs, and metrics that are weighted means too. Each micro-batch's result is scaled by its share of the total
    pair weight, so the sums equal the loss, metrics and gradient of the whole batch. The `sft` loss type is a
    token mean rather than a pair mean, so for it the result matches the whole batch only when all micro-batches
    have the same number of chosen tokens.

    Args:
        loss_fn: Maps (params, micro-batch) to (scalar loss, dict of scalar metrics).
        params: Differentiated parameters.
        micro_batches: Arrays with a leading micro-batch axis, including `pair_weights`.  # [micro_batches, pairs, ...]

    Returns:
        The metrics with `loss` added, and the gradient of the loss with respect to `params`.
    """
    total_weight = jnp.sum(micro_batches["pair_weights"])
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def one_micro_batch(carry, micro_batch):
        grads_sum, metrics_sum = carry
        (loss, metrics), grads = grad_fn(params, micro_batch)
        share = jnp.sum(micro_batch["pair_weights"]) / jnp.maximum(total_weight, 1e-9)
        metrics = {**metrics, "loss": loss}
        grads_sum = jax.tree.map(lambda total, grad: total + share * grad, grads_sum, grads)
        metrics_sum = jax.tree.map(lambda total, value: total + share * value, metrics_sum, metrics)
        return (grads_sum, metrics_sum), None

    first_micro_batch = jax.tree.map(lambda array: array[0], micro_batches)
    (_, metrics_shape), _ = jax.eval_shape(grad_fn, params, first_micro_batch)
    metrics_zero = {name: jnp.zeros((), jnp.float32) for name in [*metrics_shape, "loss"]}
    grads_zero = jax.tree.map(jnp.zeros_like, params)
    (grads, metrics), _ = jax.lax.scan(one_micro_batch, (grads_zero, metrics_zero), micro_batches)
    return metrics, grads


def make_train_step(
    graphdef: Any,
    params_treedef: Any,
    rest: Any,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    config: DPOTrainerConfig,
    micro_batch_sharding: Callable[[int], NamedSharding] | None = None,
) -> Callable[..., tuple[Params, Any, dict[str, jax.Array]]]:
    """Build the pure train step `(params, opt_state, batch, reference_params, step) -> (params, opt_state, metrics)`.

    `batch` arrays are laid out `[pairs_per_micro_batch, micro_batches, ...]`, so that the leading, sharded axis
    is the pairs of a micro-batch. `reference_params` is the frozen reference for `config.reference == "live"` and
    is ignored (pass `None`) otherwise. When the loss or the gradient norm is not finite, the step returns the
    input parameters and optimizer state unchanged, so the caller keeps the last good state.
    """

    def merge(params: Params) -> nnx.Module:
        state = jax.tree.unflatten(params_treedef, jax.tree.leaves(params))
        return nnx.merge(graphdef, state, rest)

    def loss_fn(params: Params, micro_batch: Batch, reference_params: Params | None) -> tuple[jax.Array, dict]:
        logps_args = tuple(micro_batch[name] for name in ("tokens", "valid", "loss_mask", "hidden_positions"))
        policy_logps = completion_logps(merge(params), *logps_args, config.logprob_chunk_size, config.remat)
        if config.reference == "live":
            reference_logps = completion_logps(
                merge(reference_params), *logps_args, config.logprob_chunk_size, remat=False
            )
            reference_logps = jax.lax.stop_gradient(reference_logps)
        else:
            reference_logps = micro_batch["reference_logps"]
        lengths = jnp.sum(micro_batch["loss_mask"], axis=-1).astype(jnp.float32)  # [pairs, 2]
        return dpo_loss(
            policy_logps[:, 0],
            policy_logps[:, 1],
            reference_logps[:, 0],
            reference_logps[:, 1],
            lengths[:, 0],
            lengths[:, 1],
            config.loss,
            pair_weights=micro_batch["pair_weights"],
        )

    def train_step(params: Params, opt_state: Any, batch: Batch, reference_params: Params | None, step: jax.Array):
        micro_batches = jax.tree.map(lambda array: jnp.swapaxes(array, 0, 1), batch)  # [micro_batches, pairs, ...]
        if micro_batch_sharding is not None:
            micro_batches = jax.tree.map(
                lambda array: jax.lax.with_sharding_constraint(array, micro_batch_sharding(array.ndim)),
                micro_batches,
            )
        metrics, grads = accumulate_gradients(
            lambda p, micro_batch: loss_fn(p, micro_batch, reference_params), params, micro_batches
        )
        grad_norm = optax.global_norm(grads)
        updates, new_opt_state = optimizer.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)

        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
        new_params = jax.tree.map(keep, new_params, params)
        new_opt_state = jax.tree.map(keep, new_opt_state, opt_state)
        metrics = {**metrics, "grad_norm": grad_norm, "learning_rate": jnp.asarray(schedule(step), jnp.float32)}
        return new_params, new_opt_state, metrics

    return train_step


# ---- The trainer shell -------------------------------------------------------------------------------------------


class DPOTrainer:
    """Train a policy with DPO on a pairs file, on a device mesh, with Orbax checkpoints.

    Creating the trainer reads and tokenizes the pairs, places the parameters on the mesh and prepares the
    reference (loading or computing the stored log-probs, or copying the reference parameters). When a checkpoint
    exists in `config.checkpoint.directory`, it restores the latest one, so `train` continues at the saved step
    with the same data order.

    Args:
        model: The policy; its parameters are copied onto the mesh and the module itself is not updated (see
            `model()` for the trained one).
        tokenizer: The policy's Hugging Face tokenizer.
        pairs_path: JSONL pairs file (see `pairs.read_pairs`); precomputed reference log-probs are stored beside it.
        config: Run settings.
        mesh: Device mesh; defaults to `make_mesh(config.mesh_shape)`.
        reference_model: The reference; defaults to the policy as passed in, before any training.
    """

    def __init__(
        self,
        model: nnx.Module,
        tokenizer: Any,
        pairs_path: str | Path,
        config: DPOTrainerConfig,
        *,
        mesh: Mesh | None = None,
        reference_model: nnx.Module | None = None,
    ) -> None:
        self.config = config
        self.mesh = mesh if mesh is not None else make_mesh(config.mesh_shape)
        self.pairs_path = Path(pairs_path)
        batch_devices = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        if config.micro_batch_size % batch_devices:
            raise ValueError(
                f"Each micro-batch has {config.micro_batch_size} pairs (batch_size={config.batch_size} / "
                f"gradient_accumulation_steps={config.gradient_accumulation_steps}), which is not a multiple of the "
                f"{batch_devices} devices on mesh axes data x fsdp; change batch_size or the mesh shape."
            )

        text_pairs = pairs_lib.read_pairs(self.pairs_path)
        self.pairs = pairs_lib.tokenize_pairs(text_pairs, tokenizer, config.max_length)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.steps_per_epoch = math.ceil(len(self.pairs) / config.batch_size)

        self._graphdef, params_state, self._rest = nnx.split(model, nnx.Param, ...)
        self._params_treedef = jax.tree.structure(params_state)
        self.param_shardings: Params = nnx.to_pure_dict(state_shardings(params_state, self.mesh))
        # A copy, because the train step donates its parameters and must not delete the caller's model arrays.
        self.params: Params = put_global(nnx.to_pure_dict(params_state), self.param_shardings)

        self.optimizer, self.schedule = make_optimizer(config.optimizer)
        self._params_target = restore_target(self.params, self.param_shardings)
        self._opt_state_target = optimizer_state_target(self.optimizer, self._params_target)
        self._opt_state_shardings = jax.tree.map(lambda leaf: leaf.sharding, self._opt_state_target)
        self.opt_state = jax.jit(self.optimizer.init, out_shardings=self._opt_state_shardings)(self.params)
        self._replicated = NamedSharding(self.mesh, PartitionSpec())

        self.step = 0
        self.epoch = 0
        self.batch_index = 0
        self.rng_key = jax.jit(lambda: jax.random.key(config.seed), out_shardings=self._replicated)()

        # The reference comes from the model as passed in, before a checkpoint replaces the parameters.
        self.reference_params: Params | None = None
        self.reference_logps: np.ndarray | None = None
        reference_params = self.params if reference_model is None else self._params_of(reference_model)
        if config.reference == "live":
            self.reference_params = jax.tree.map(jnp.copy, reference_params)
        elif config.loss.reference_free:
            self.reference_logps = np.zeros((len(self.pairs), 2), np.float32)
        else:
            self.reference_logps = self._load_or_compute_reference_logps(reference_params)

        self._train_step = self._compile_train_step()
        self.checkpointer = TrainingCheckpointer(config.checkpoint) if config.checkpoint else None
        if self.checkpointer is not None and self.checkpointer.latest_step() is not None:
            self.restore()

    # ---- Parameters ----

    def _params_of(self, model: nnx.Module) -> Params:
        graphdef, state, _ = nnx.split(model, nnx.Param, ...)
        if jax.tree.structure(state) != self._params_treedef:
            raise ValueError(
                "reference_model has a different parameter structure from the policy; build both from one config."
            )
        return put_global(nnx.to_pure_dict(state), self.param_shardings)

    def _merge(self, params: Params) -> nnx.Module:
        state = jax.tree.unflatten(self._params_treedef, jax.tree.leaves(params))
        return nnx.merge(self._graphdef, state, self._rest)

    def model(self) -> nnx.Module:
        """Return the policy module with the current trained parameters."""
        return self._merge(self.params)

    # ---- Reference log-probs ----

    def _load_or_compute_reference_logps(self, reference_params: Params) -> np.ndarray:
        metadata = {
            "format": REFERENCE_LOGPS_FORMAT,
            "num_pairs": len(self.pairs),
            "tokens_sha256": pairs_lib.pairs_fingerprint(self.pairs),
            "reference_id": self.config.reference_id,
            "params_checksum": _params_checksum(reference_params),
        }
        stored = pairs_lib.load_reference_logps(self.pairs_path, metadata)
        if stored is not None:
            logger.info("Loaded stored reference log-probs of %d pairs", len(stored))
            return stored
        logps = self.compute_reference_logps(reference_params)
        try:
            pairs_lib.save_reference_logps(self.pairs_path, logps, metadata)
        except OSError as error:
            logger.warning("Could not store reference log-probs beside %s (%s); keeping them in memory only",
                           self.pairs_path, error)
        return logps

    def compute_reference_logps(self, reference_params: Params) -> np.ndarray:
        """Compute `log pi_ref` of every pair's chosen and rejected completion, `[pairs, 2]`, without gradients.

        Pairs are sorted by length and run in batches of `config.reference_batch_size` (rounded up to the mesh's
        batch devices), each padded to its own length bucket.
        """
        started = time.perf_counter()
        batch_devices = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        batch_pairs = math.ceil(self.config.reference_batch_size / batch_devices) * batch_devices
        chunk_size = self.config.logprob_chunk_size
        graphdef, treedef, rest = self._graphdef, self._params_treedef, self._rest

        def forward(params: Params, tokens, valid, loss_mask, hidden_positions) -> jax.Array:
            model = nnx.merge(graphdef, jax.tree.unflatten(treedef, jax.tree.leaves(params)), rest)
            return completion_logps(model, tokens, valid, loss_mask, hidden_positions, chunk_size, remat=False)

        in_batch = tuple(batch_sharding(self.mesh, 3) for _ in range(4))
        # Replicated output: every process reads all log-probs, also when rows live on other hosts' devices.
        forward = jax.jit(forward, in_shardings=(self.param_shardings, *in_batch),
                          out_shardings=NamedSharding(self.mesh, PartitionSpec()))
        order = np.argsort([pair.length for pair in self.pairs], kind="stable")
        logps = np.zeros((len(self.pairs), 2), np.float32)
        for start in range(0, len(order), batch_pairs):
            indices = order[start : start + batch_pairs]
            length = self._bucket([self.pairs[i] for i in indices])
            batch = pairs_lib.make_batch(
                self.pairs, indices, self.pad_id, length, batch_pairs, self.config.length_bucket
            )
            arrays = shard_batch((batch.tokens, batch.valid, batch.loss_mask, batch.hidden_positions), self.mesh)
            logps[indices] = np.asarray(forward(reference_params, *arrays))[: len(indices)]
        elapsed = time.perf_counter() - started
        logger.info("Computed reference log-probs of %d pairs in %.1f s", len(self.pairs), elapsed)
        return logps

    # ---- Train step ----

    def _compile_train_step(self) -> Callable[..., Any]:
        def micro_batch_sharding(ndim: int) -> NamedSharding:
            return NamedSharding(self.mesh, PartitionSpec(None, BATCH_AXES, *([None] * (ndim - 2))))

        step_fn = make_train_step(
            self._graphdef, self._params_treedef, self._rest, self.optimizer, self.schedule, self.config,
            micro_batch_sharding,
        )
        batch_shardings = {
            "tokens": batch_sharding(self.mesh, 4),
            "valid": batch_sharding(self.mesh, 4),
            "loss_mask": batch_sharding(self.mesh, 4),
            "hidden_positions": batch_sharding(self.mesh, 4),
            "reference_logps": batch_sharding(self.mesh, 3),
            "pair_weights": batch_sharding(self.mesh, 2),
        }
        reference_shardings = self.param_shardings if self.config.reference == "live" else None
        # The old parameters and optimizer state are donated: the step returns new ones of the same layout.
        return jax.jit(
            step_fn,
            in_shardings=(self.param_shardings, self._opt_state_shardings, batch_shardings, reference_shardings,
                          self._replicated),
            out_shardings=(self.param_shardings, self._opt_state_shardings, self._replicated),
            donate_argnums=(0, 1),
        )

    def _bucket(self, pairs: list[pairs_lib.TokenizedPair]) -> int:
        longest = max(pair.length for pair in pairs)
        return pairs_lib.bucket_length(longest, self.config.length_bucket, self.config.max_length)

    def next_batch(self) -> pairs_lib.PairBatch:
        """Return the batch at the current data position (epoch, batch index), without advancing it."""
        order = pairs_lib.epoch_permutation(len(self.pairs), self.config.seed, self.epoch)
        start = self.batch_index * self.config.batch_size
        indices = order[start : start + self.config.batch_size]
        length = self._bucket([self.pairs[i] for i in indices])
        return pairs_lib.make_batch(
            self.pairs, indices, self.pad_id, length, self.config.batch_size, self.config.length_bucket
        )

    def _device_batch(self, batch: pairs_lib.PairBatch) -> Batch:
        micro, accumulation = self.config.micro_batch_size, self.config.gradient_accumulation_steps
        if self.reference_logps is not None:
            reference_logps = self.reference_logps[batch.pair_indices]
        else:
            reference_logps = np.zeros((len(batch.pair_indices), 2), np.float32)
        host = {
            "tokens": batch.tokens,
            "valid": batch.valid,
            "loss_mask": batch.loss_mask,
            "hidden_positions": batch.hidden_positions,
            "reference_logps": reference_logps,
            "pair_weights": batch.pair_weights,
        }
        # Row i of the batch becomes pair i // accumulation of micro-batch i % accumulation.
        host = {name: array.reshape(micro, accumulation, *array.shape[1:]) for name, array in host.items()}
        return shard_batch(host, self.mesh)

    def train_step(self) -> dict[str, float]:
        """Run one optimizer step on the next batch and advance the data position.

        Returns:
            Host metrics: `loss`, `loss/<type>`, `rewards/*`, `logps/*`, `grad_norm`, `learning_rate`,
            `tokens_per_second` (real tokens of chosen and rejected sequences per wall-clock second of the step),
            `step_time_s`, `num_tokens` and `step` (steps done, this one included).

        Raises:
            NonFiniteError: If the loss or gradient norm is not finite. The parameters, optimizer state, data
                position and checkpoints stay at the last good step.
        """
        started = time.perf_counter()
        batch = self.next_batch()
        device_batch = self._device_batch(batch)
        params, opt_state, metrics = self._train_step(
            self.params, self.opt_state, device_batch, self.reference_params, jnp.asarray(self.step, jnp.int32)
        )
        # The step returned the unchanged inputs if the update was not finite; they replace the donated buffers.
        self.params, self.opt_state = params, opt_state
        host_metrics = {name: float(value) for name, value in jax.device_get(metrics).items()}
        check_finite(self.step, loss=host_metrics["loss"], grad_norm=host_metrics["grad_norm"])

        self.step += 1
        self.rng_key = jax.random.split(self.rng_key)[0]
        self.batch_index += 1
        if self.batch_index == self.steps_per_epoch:
            self.epoch, self.batch_index = self.epoch + 1, 0
        elapsed = time.perf_counter() - started
        host_metrics.update(
            step=float(self.step),
            num_tokens=float(batch.num_tokens),
            step_time_s=elapsed,
            tokens_per_second=batch.num_tokens / elapsed,
        )
        if self.checkpointer is not None:
            self.save_checkpoint()
        return host_metrics

    def train(self, num_steps: int) -> list[dict[str, float]]:
        """Run `num_steps` optimizer steps, log their metrics, and save a checkpoint at the end.

        Raises:
            NonFiniteError: See `train_step`.
        """
        history = []
        for _ in range(num_steps):
            metrics = self.train_step()
            history.append(metrics)
            if self.step % self.config.log_every == 0:
                logger.info(
                    "step %d epoch %d: loss %.4f, rewards/accuracies %.3f, rewards/margins %.4f, grad_norm %.4f, "
                    "learning_rate %.3g, %.0f tokens/s",
                    self.step, self.epoch, metrics["loss"], metrics["rewards/accuracies"],
                    metrics["rewards/margins"], metrics["grad_norm"], metrics["learning_rate"],
                    metrics["tokens_per_second"],
                )
        if self.checkpointer is not None and num_steps > 0:
            self.save_checkpoint(force=True)
            self.checkpointer.wait_until_finished()
        return history

    # ---- Checkpoints ----

    @property
    def data_position(self) -> dict[str, int]:
        """Where the next batch starts: the epoch and the batch index inside its permutation."""
        return {"epoch": self.epoch, "batch_index": self.batch_index}

    def save_checkpoint(self, force: bool = False) -> bool:
        """Save the current state if the checkpoint interval is due, or always when `force`; return if it started."""
        if self.checkpointer is None:
            raise ValueError("No checkpoint directory is configured; set DPOTrainerConfig.checkpoint.")
        if force and self.step in self.checkpointer.all_steps():
            return False
        checkpoint = TrainingCheckpoint(
            step=self.step,
            params=self.params,
            opt_state=self.opt_state,
            rng_key=self.rng_key,
            data_position=self.data_position,
            metadata={"pairs_path": str(self.pairs_path), "num_pairs": len(self.pairs)},
        )
        return self.checkpointer.save(checkpoint, force=force)

    def restore(self, step: int | None = None) -> None:
        """Load the latest checkpoint, or `step`: parameters, optimizer state, PRNG key and data position."""
        if self.checkpointer is None:
            raise ValueError("No checkpoint directory is configured; set DPOTrainerConfig.checkpoint.")
        checkpoint = self.checkpointer.restore(
            self._params_target, self._opt_state_target, step=step, rng_key_sharding=self._replicated
        )
        if checkpoint.metadata.get("num_pairs") != len(self.pairs):
            raise ValueError(
                f"Checkpoint at step {checkpoint.step} was written for {checkpoint.metadata.get('num_pairs')} pairs "
                f"({checkpoint.metadata.get('pairs_path')}), but {self.pairs_path} has {len(self.pairs)}; resume with "
                "the same pairs file or use a new checkpoint directory."
            )
        self.params, self.opt_state, self.rng_key = checkpoint.params, checkpoint.opt_state, checkpoint.rng_key
        self.step = checkpoint.step
        self.epoch = int(checkpoint.data_position["epoch"])
        self.batch_index = int(checkpoint.data_position["batch_index"])
        logger.info("Resuming at step %d (epoch %d, batch %d)", self.step, self.epoch, self.batch_index)

    def close(self) -> None:
        """Wait for pending checkpoint writes and release the checkpointer."""
        if self.checkpointer is not None:
            self.checkpointer.close()

    def __enter__(self) -> DPOTrainer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _params_checksum(params: Params) -> str:
    """Return a short fingerprint of parameter values: the sum of absolute values, to 6 significant digits."""
    total = jax.jit(lambda tree: sum(jnp.sum(jnp.abs(leaf.astype(jnp.float32))) for leaf in jax.tree.leaves(tree)))
    return f"{float(total(params)):.6e}"
