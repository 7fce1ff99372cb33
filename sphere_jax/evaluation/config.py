"""Typed settings of an evaluation run."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from sphere_jax.evaluation.prompts import PromptConfig

Mode = Literal["greedy", "sample"]


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Settings of an evaluation run.

    Attributes:
        benchmarks: Dataset specs to evaluate, for example ``("gsm8k:test", "math500:test")``.
        mode: ``"greedy"`` decodes one completion per problem at temperature 0 and reports pass@1.
            ``"sample"`` draws ``num_samples`` completions at ``temperature`` and reports pass@k
            and maj@k for each k in ``ks``.
        num_samples: Completions per problem; 1 in greedy mode.
        ks: The k values of pass@k and maj@k; each at most ``num_samples``. Greedy mode uses (1,).
        temperature: Sampling temperature; 0 in greedy mode.
        max_new_tokens: Maximum generated tokens per completion.
        seed: Sampling seed; batch ``b`` is sampled with ``seed + b``.
        limit: Maximum problems per benchmark, or None for all (overrides a spec's ``limit``).
        subset_seed: None evaluates the first ``limit`` problems; an int draws a seeded random subset.
        batch_size: Prompts per ``Generator.generate`` call.
        prompt: System message and user template.
        checker_workers: Processes of the answer checker.
        checker_deadline_s: Seconds the checker may spend on one answer before it reports ``timed_out``.
        strict_data: Raise on bad data rows instead of skipping them.
        answer_fallback: ``"none"`` reads an answer only from ``\\boxed{}``, ``#### n``, "the answer
            is" or "final answer:". ``"last_number"`` also takes the last number of a completion
            that has none of these and ended by itself (not cut at ``max_new_tokens``), for models
            that state their answer in prose.
    """

    benchmarks: tuple[str, ...] = ("gsm8k:test",)
    mode: Mode = "greedy"
    num_samples: int = 1
    ks: tuple[int, ...] = (1,)
    temperature: float = 0.0
    max_new_tokens: int = 1024
    seed: int = 0
    limit: int | None = None
    subset_seed: int | None = None
    batch_size: int = 16
    prompt: PromptConfig = dataclasses.field(default_factory=PromptConfig)
    checker_workers: int = 2
    checker_deadline_s: float = 2.0
    strict_data: bool = False
    answer_fallback: Literal["none", "last_number"] = "none"

    def __post_init__(self) -> None:
        if self.answer_fallback not in ("none", "last_number"):
            raise ValueError(f"EvalConfig.answer_fallback={self.answer_fallback!r} is not one of 'none', 'last_number'.")
        if not self.benchmarks:
            raise ValueError("EvalConfig.benchmarks is empty; name at least one spec such as 'gsm8k:test'.")
        if self.mode == "greedy":
            if self.num_samples != 1 or self.temperature != 0.0 or tuple(self.ks) != (1,):
                raise ValueError(
                    f"Greedy mode decodes one completion at temperature 0 and reports pass@1, but got "
                    f"num_samples={self.num_samples}, temperature={self.temperature}, ks={self.ks}; "
                    f"use mode='sample' for pass@k and maj@k."
                )
        elif self.mode == "sample":
            if self.temperature <= 0.0:
                raise ValueError(f"Sample mode needs temperature > 0, got {self.temperature}; use mode='greedy' for 0.")
            if not self.ks or min(self.ks) < 1 or max(self.ks) > self.num_samples:
                raise ValueError(
                    f"ks={self.ks} must be positive and at most num_samples={self.num_samples}; "
                    f"raise num_samples or lower the largest k."
                )
        else:
            raise ValueError(f"Unknown mode {self.mode!r}; valid modes are 'greedy' and 'sample'.")
        for name in ("max_new_tokens", "batch_size", "checker_workers", "num_samples"):
            if getattr(self, name) < 1:
                raise ValueError(f"EvalConfig.{name} must be at least 1, got {getattr(self, name)}.")
        if self.checker_deadline_s <= 0:
            raise ValueError(f"EvalConfig.checker_deadline_s must be positive, got {self.checker_deadline_s}.")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EvalConfig:
        """Build a config from a plain dict, such as one section of a YAML file.

        Raises:
            ValueError: If a key is unknown or a value is invalid.
        """
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown evaluation settings {unknown}; valid settings are {sorted(known)}.")
        values = dict(values)
        if "prompt" in values and isinstance(values["prompt"], dict):
            values["prompt"] = PromptConfig(**values["prompt"])
        for name in ("benchmarks", "ks"):
            if name in values:
                values[name] = (values[name],) if isinstance(values[name], (str, int)) else tuple(values[name])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-ready dict."""
        settings = dataclasses.asdict(self)
        settings["benchmarks"] = list(self.benchmarks)
        settings["ks"] = list(self.ks)
        return settings
