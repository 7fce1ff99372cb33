"""The typed configuration of a `sphere run`: one dataclass per YAML section."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from sphere_jax.evaluation.config import EvalConfig
from sphere_jax.sampling.sampler import SamplerConfig
from sphere_jax.search.config import GeneratorConfig
from sphere_jax.training.mesh import MESH_AXES
from sphere_jax.training.trainer import DPOTrainerConfig
from sphere_jax.typed_config import ConfigError, apply_overrides, from_dict, load_yaml


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model source (packaged:<name>, a .gguf file, an HF folder or a hub id) and its dtype."""

    source: str = ""
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "bfloat16"):
            raise ValueError(f"dtype={self.dtype!r} is not one of float32, bfloat16")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Training problems: a problem-set spec, and a deterministic subset of it."""

    train: str = "gsm8k:train"
    limit: int | None = None
    subset_seed: int | None = None


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """The final HF export of the trained policy."""

    enabled: bool = True
    dtype: str = "bfloat16"


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything one `sphere run` needs; YAML sections map to fields of the same names.

    Attributes:
        run_dir: folder of the run; running the same command again resumes it.
        iterations: rounds of generate -> train -> evaluate; each generates with the policy
            trained in the round before.
        policy: the model being improved.
        small_model: the Stage 3 model (same family, fewer parameters); empty source skips Stage 3.
        reward_model: the PRM for `generate.reward.backend: prm`.
        mesh: axis sizes over ("data", "fsdp", "tensor"); -1 takes the remaining devices.
        epochs: passes over each iteration's pairs.
        eval_before: evaluate the starting policy before the first iteration.
    """

    run_dir: str = "runs/default"
    iterations: int = 1
    seed: int = 0
    policy: ModelSpec = ModelSpec(source="packaged:qwen2.5-coder-0.5b-instruct")
    small_model: ModelSpec = ModelSpec(source="packaged:smollm2-135m-instruct")
    data: DataConfig = DataConfig()
    generate: GeneratorConfig = GeneratorConfig()
    sampler: SamplerConfig = SamplerConfig(max_cache_length=2048)
    train: DPOTrainerConfig = DPOTrainerConfig()
    epochs: int = 1
    eval: EvalConfig = EvalConfig()
    eval_before: bool = True
    mesh: dict[str, int] = dataclasses.field(default_factory=lambda: {"data": 1, "fsdp": -1, "tensor": 1})
    export: ExportConfig = ExportConfig()

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"iterations={self.iterations} must be at least 1")
        if self.epochs < 1:
            raise ValueError(f"epochs={self.epochs} must be at least 1")
        unknown = sorted(set(self.mesh) - set(MESH_AXES))
        if unknown:
            raise ValueError(f"mesh axis {unknown[0]!r} is not one of {', '.join(MESH_AXES)}")
        if not self.policy.source:
            raise ValueError("policy.source is empty; name a model source such as packaged:qwen2.5-coder-0.5b-instruct")


def load_run_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML file, apply dotted overrides, and validate everything, including the mesh."""
    data: dict[str, Any] = load_yaml(path) if path else {}
    apply_overrides(data, list(overrides))
    config = from_dict(RunConfig, data)
    check_mesh_fits(config.mesh)
    check_models(config)
    return config


def check_models(config: RunConfig) -> None:
    """Raise ConfigError naming the key of a model source that does not exist."""
    from sphere_jax.weights.load import check_source
    from sphere_jax.weights.mapping import WeightError

    sources = {"policy.source": config.policy.source}
    if config.generate.stage3 and config.small_model.source:
        sources["small_model.source"] = config.small_model.source
    if config.generate.reward.backend == "prm":
        sources["generate.reward.prm_model"] = config.generate.reward.prm_model
    for key, source in sources.items():
        try:
            check_source(source)
        except WeightError as error:
            raise ConfigError(f"{key}: {error}") from None


def check_mesh_fits(shape: dict[str, int]) -> None:
    """Raise ConfigError when the mesh shape cannot be laid over this machine's devices."""
    import jax

    from sphere_jax.training.mesh import make_mesh

    try:
        make_mesh(shape)
    except ValueError as error:
        raise ConfigError(f"mesh={shape} does not fit the {jax.device_count()} available devices: {error}") from None
