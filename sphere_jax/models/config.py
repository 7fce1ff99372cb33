"""Model configuration for the Llama and Qwen2 decoder families, read from and written to HF form."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax.numpy as jnp

# HF `architectures` entries that this decoder implements, mapped to the family name.
SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen2ForProcessRewardModel": "qwen2",
}
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class ConfigError(ValueError):
    """A model config that this decoder cannot run."""


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling: `linear` divides all frequencies, `llama3` only the low ones."""

    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shape and numerics of one decoder; field names follow the HF config where one exists."""

    family: str  # "llama" or "qwen2"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling = RopeScaling()
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # q, k and v projections carry a bias (always true for Qwen2)
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    architecture: str = ""  # the HF class name, kept for export
    num_labels: int = 0  # classes of a process-reward head; 0 for a causal LM
    param_dtype: str = "float32"
    compute_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.family not in ("llama", "qwen2"):
            raise ConfigError(f"family must be 'llama' or 'qwen2', got {self.family!r}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        for name in ("param_dtype", "compute_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ConfigError(f"{name}={getattr(self, name)!r} is not one of {sorted(DTYPES)}")
        if self.rope_scaling.rope_type not in SUPPORTED_ROPE_TYPES:
            raise ConfigError(
                f"rope type {self.rope_scaling.rope_type!r} is not supported; "
                f"supported types: {', '.join(SUPPORTED_ROPE_TYPES)}"
            )

    @property
    def param_jnp_dtype(self) -> Any:
        return DTYPES[self.param_dtype]

    @property
    def compute_jnp_dtype(self) -> Any:
        return DTYPES[self.compute_dtype]

    @property
    def is_reward_model(self) -> bool:
        return self.num_labels > 0

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    def num_parameters(self) -> int:
        """Count the parameters, the output embedding included when it is not tied."""
        e, f, h, k, d = (
            self.hidden_size,
            self.intermediate_size,
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
        )
        attention = e * h * d * 2 + e * k * d * 2
        if self.attention_bias:
            attention += h * d + 2 * k * d
        per_layer = attention + 3 * e * f + 2 * e
        total = self.vocab_size * e + self.num_layers * per_layer + e
        if not self.tie_word_embeddings and not self.is_reward_model:
            total += self.vocab_size * e
        if self.is_reward_model:
            total += e * e + e + e * self.num_labels + self.num_labels
        return total

    # ----------------------------------------------------------------------------------------
    # HF config.json

    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], *, source: str = "config.json", **overrides: Any) -> ModelConfig:
        """Build a config from the fields of an HF `config.json`.

        Accepts both the transformers 5 `rope_parameters` block and the older `rope_theta` /
        `rope_scaling` fields.

        Raises:
            ConfigError: the architecture, activation or rope type is not supported, or a
                required field is missing.
        """
        architectures = hf.get("architectures") or []
        architecture = next((a for a in architectures if a in SUPPORTED_ARCHITECTURES), None)
        if architecture is None:
            model_type = hf.get("model_type")
            if model_type in ("llama", "qwen2") and not architectures:
                architecture = "LlamaForCausalLM" if model_type == "llama" else "Qwen2ForCausalLM"
            else:
                raise ConfigError(
                    f"{source}: architectures={architectures!r} (model_type={model_type!r}) is not "
                    f"supported; supported architectures: {', '.join(SUPPORTED_ARCHITECTURES)}"
                )
        family = SUPPORTED_ARCHITECTURES[architecture]
        activation = hf.get("hidden_act", "silu")
        if activation != "silu":
            raise ConfigError(f"{source}: hidden_act={activation!r} is not supported; expected 'silu'")
        if hf.get("mlp_bias"):
            raise ConfigError(f"{source}: mlp_bias=true is not supported")
        if family == "qwen2" and hf.get("use_sliding_window"):
            raise ConfigError(f"{source}: use_sliding_window=true is not supported")

        def required(key: str) -> Any:
            if key not in hf:
                raise ConfigError(f"{source}: required field {key!r} is missing")
            return hf[key]

        num_heads = int(required("num_attention_heads"))
        hidden_size = int(required("hidden_size"))
        rope_theta, rope_scaling = _read_rope(hf, source)
        eos = hf.get("eos_token_id")
        eos_ids = tuple(int(e) for e in (eos if isinstance(eos, list) else [eos] if eos is not None else []))
        num_labels = 0
        if architecture == "Qwen2ForProcessRewardModel":
            num_labels = int(hf.get("num_labels", 2))
        values = dict(
            family=family,
            architecture=architecture,
            vocab_size=int(required("vocab_size")),
            hidden_size=hidden_size,
            intermediate_size=int(required("intermediate_size")),
            num_layers=int(required("num_hidden_layers")),
            num_heads=num_heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
            head_dim=int(hf.get("head_dim") or hidden_size // num_heads),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            attention_bias=True if family == "qwen2" else bool(hf.get("attention_bias", False)),
            bos_token_id=hf.get("bos_token_id"),
            eos_token_ids=eos_ids,
            pad_token_id=hf.get("pad_token_id"),
            num_labels=num_labels,
        )
        values.update(overrides)
        return cls(**values)

    @classmethod
    def from_hf_file(cls, path: str | Path, **overrides: Any) -> ModelConfig:
        path = Path(path)
        try:
            hf = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: config.json not found") from None
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}: not valid JSON ({error})") from None
        return cls.from_hf_dict(hf, source=str(path), **overrides)

    def to_hf_dict(self) -> dict[str, Any]:
        """Return the HF `config.json` fields for this model (transformers 5 layout)."""
        architecture = self.architecture or (
            "LlamaForCausalLM" if self.family == "llama" else "Qwen2ForCausalLM"
        )
        rope: dict[str, Any] = {"rope_type": self.rope_scaling.rope_type, "rope_theta": self.rope_theta}
        if self.rope_scaling.rope_type == "linear":
            rope["factor"] = self.rope_scaling.factor
        elif self.rope_scaling.rope_type == "llama3":
            rope.update(
                factor=self.rope_scaling.factor,
                low_freq_factor=self.rope_scaling.low_freq_factor,
                high_freq_factor=self.rope_scaling.high_freq_factor,
                original_max_position_embeddings=self.rope_scaling.original_max_position_embeddings,
            )
        eos: int | list[int] | None
        eos = list(self.eos_token_ids) if len(self.eos_token_ids) > 1 else (
            self.eos_token_ids[0] if self.eos_token_ids else None
        )
        hf: dict[str, Any] = {
            "architectures": [architecture],
            "model_type": self.family,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_parameters": rope,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "pad_token_id": self.pad_token_id,
            "dtype": self.param_dtype,
        }
        if self.family == "llama":
            hf["attention_bias"] = self.attention_bias
            hf["mlp_bias"] = False
        else:
            hf["use_sliding_window"] = False
        if self.is_reward_model:
            hf["num_labels"] = self.num_labels
        return hf


def _read_rope(hf: dict[str, Any], source: str) -> tuple[float, RopeScaling]:
    """Read RoPE theta and scaling from `rope_parameters` (transformers 5) or the older fields."""
    params = hf.get("rope_parameters")
    if isinstance(params, dict) and "full_attention" in params and isinstance(params["full_attention"], dict):
        params = params["full_attention"]
    if params is None:
        params = dict(hf.get("rope_scaling") or {})
        params.setdefault("rope_theta", hf.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type", params.get("type", "default")) or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ConfigError(
            f"{source}: rope type {rope_type!r} is not supported; "
            f"supported types: {', '.join(SUPPORTED_ROPE_TYPES)}"
        )
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    scaling = RopeScaling(
        rope_type=rope_type,
        factor=float(params.get("factor", 1.0)),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position_embeddings=int(params.get("original_max_position_embeddings", 8192)),
    )
    return theta, scaling
