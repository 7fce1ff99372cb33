"""Stream tensors out of an HF checkpoint folder (`model.safetensors` or a sharded index)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open

from sphere_jax.weights.mapping import WeightError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def safetensors_files(folder: Path) -> list[Path]:
    """List the checkpoint files of an HF folder, in shard order.

    Raises:
        WeightError: neither file exists, or the index names a shard that does not.
    """
    index = folder / INDEX_FILE
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as error:
            raise WeightError(f"{index}: not a valid safetensors index ({error})") from None
        files = [folder / name for name in sorted(set(weight_map.values()))]
        for file in files:
            if not file.exists():
                raise WeightError(f"{index}: shard {file.name} is listed but {file} does not exist")
        return files
    single = folder / SINGLE_FILE
    if single.exists():
        return [single]
    raise WeightError(f"{folder}: found neither {SINGLE_FILE} nor {INDEX_FILE}")


def iter_safetensors(folder: Path) -> Iterator[tuple[str, np.ndarray]]:
    """Yield (name, array) for every tensor of every shard, one tensor in memory at a time.

    The file is reopened for each tensor: an open handle keeps every page it has read resident,
    which on a 2.35 GiB checkpoint added about 2 GiB to the loader's peak memory.
    """
    for file in safetensors_files(folder):
        try:
            with safe_open(str(file), framework="numpy") as handle:
                names = list(handle.keys())
            for name in names:
                with safe_open(str(file), framework="numpy") as handle:
                    tensor = handle.get_tensor(name)
                yield name, tensor
        except SafetensorError as error:
            raise WeightError(f"{file}: cannot read safetensors file ({error}); is it truncated?") from None
