"""Export a model as an HF folder that `transformers.AutoModelForCausalLM.from_pretrained` loads."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import ml_dtypes
import numpy as np
from flax import nnx

from sphere_jax.models.config import ModelConfig
from sphere_jax.weights.mapping import hf_names, hf_target
from sphere_jax.weights.safetensors_writer import ShardedSafetensorsWriter

_NUMPY_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


def _param_arrays(model: nnx.Module) -> dict[tuple[str, ...], Any]:
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {tuple(str(k) for k in path): variable.get_value() for path, variable in flat}


def iter_hf_tensors(model: nnx.Module, cfg: ModelConfig, dtype: Any):
    """Yield (HF name, array) pairs, copying one parameter to the host at a time."""
    arrays = _param_arrays(model)
    by_path: dict[tuple[str, ...], list[str]] = {}
    for name in hf_names(cfg):
        target = hf_target(cfg, name)
        by_path.setdefault(target.path, []).append(name)
    for path, names in by_path.items():
        host = np.asarray(jax.device_get(arrays[path]), dtype=np.float32)
        for name in names:
            target = hf_target(cfg, name)
            ours = host if target.layer is None else host[target.layer]
            yield name, np.asarray(target.to_hf(ours)).astype(dtype)
        del host


def export_hf(
    model: nnx.Module,
    cfg: ModelConfig,
    out_dir: str | Path,
    *,
    tokenizer: Any = None,
    dtype: str | None = None,
    max_shard_bytes: int = 2 * 1024**3,
    overwrite: bool = False,
) -> Path:
    """Write config.json, generation_config.json, safetensors shards and tokenizer files.

    The folder is assembled under a temporary name beside `out_dir` and renamed at the end, so
    an interrupted export leaves no half-written folder at `out_dir`.

    Raises:
        FileExistsError: `out_dir` exists and is not empty, and `overwrite` is false.
    """
    out_dir = Path(out_dir)
    dtype = dtype or cfg.param_dtype
    if dtype not in _NUMPY_DTYPES:
        raise ValueError(f"export dtype {dtype!r} is not one of {sorted(_NUMPY_DTYPES)}")
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{out_dir} exists and is not empty; pass overwrite=True or choose another folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        writer = ShardedSafetensorsWriter(staging, max_shard_bytes)
        for name, array in iter_hf_tensors(model, cfg, _NUMPY_DTYPES[dtype]):
            writer.add(name, array)
        writer.close()
        hf_config = cfg.replace(param_dtype=dtype).to_hf_dict()
        (staging / "config.json").write_text(json.dumps(hf_config, indent=2))
        generation = {
            "bos_token_id": cfg.bos_token_id,
            "eos_token_id": list(cfg.eos_token_ids) if len(cfg.eos_token_ids) > 1 else hf_config["eos_token_id"],
            "pad_token_id": cfg.pad_token_id,
        }
        (staging / "generation_config.json").write_text(json.dumps(generation, indent=2))
        if tokenizer is not None:
            tokenizer.save_pretrained(str(staging))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out_dir
