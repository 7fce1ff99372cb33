"""Write tensors into safetensors shards with an HF index, one shard in memory at a time."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file


class ShardedSafetensorsWriter:
    """Collect named arrays and write `model.safetensors`, or numbered shards plus an index.

    A shard is written as soon as adding a tensor would push it past `max_shard_bytes`. A single
    shard is named `model.safetensors`, as transformers expects for small models.
    """

    def __init__(self, folder: Path, max_shard_bytes: int = 2 * 1024**3):
        self.folder = folder
        self.max_shard_bytes = max_shard_bytes
        self._pending: dict[str, np.ndarray] = {}
        self._pending_bytes = 0
        self._shards: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, array: np.ndarray) -> None:
        if self._pending and self._pending_bytes + array.nbytes > self.max_shard_bytes:
            self._flush()
        self._pending[name] = np.ascontiguousarray(array)
        self._pending_bytes += array.nbytes
        self.total_bytes += array.nbytes

    def _flush(self) -> None:
        path = self.folder / f"shard-{len(self._shards):05d}.partial"
        save_file(self._pending, str(path), metadata={"format": "pt"})
        self._shards.append((path, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0

    def close(self) -> list[Path]:
        """Flush the last shard, give shards their final names, write the index; return the files."""
        if self._pending or not self._shards:
            self._flush()
        count = len(self._shards)
        if count == 1:
            final = self.folder / "model.safetensors"
            self._shards[0][0].rename(final)
            return [final]
        weight_map, files = {}, []
        for i, (path, names) in enumerate(self._shards):
            final = self.folder / f"model-{i + 1:05d}-of-{count:05d}.safetensors"
            path.rename(final)
            files.append(final)
            weight_map.update({name: final.name for name in names})
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        return files
