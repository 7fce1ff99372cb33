"""Read raw rows from ``datasets`` datasets and TensorFlow Datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sphere_jax.data.errors import DataFormatError


def read_hf_rows(location: str, split: str, config: str | None) -> list[dict[str, Any]]:
    """Read one split of a ``datasets`` dataset.

    A local folder is opened with ``datasets.load_from_disk``. A saved ``DatasetDict`` gives the
    named split; a saved single ``Dataset`` is used whole. Any other location is a hub name opened
    with ``datasets.load_dataset``, which needs internet or a filled local cache.

    Args:
        location: A folder written by ``save_to_disk``, or a hub name such as ``openai/gsm8k``.
        split: Split to read from a ``DatasetDict`` or the hub.
        config: Hub configuration name (``main`` for GSM8K), or None.

    Raises:
        FileNotFoundError: If a local folder is not a saved dataset.
        DataFormatError: If the saved dataset has no such split.
    """
    import datasets

    path = Path(location)
    if path.exists():
        if not path.is_dir() or not (
            (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file()
        ):
            raise FileNotFoundError(
                f"{path} is not a dataset saved with save_to_disk (expected dataset_dict.json or dataset_info.json "
                f"inside); for a plain data file use 'file:{location}' instead of 'hf:'."
            )
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DataFormatError(f"{path} has no split {split!r}; its splits are {sorted(loaded)}.")
            loaded = loaded[split]
        return loaded.to_list()

    dataset = datasets.load_dataset(location, config, split=split)
    return dataset.to_list()


def read_tfds_rows(name: str, split: str) -> list[dict[str, Any]]:
    """Read one split of a TensorFlow Datasets dataset, decoding bytes fields to text.

    NOTE: never run in this repository's tests, because ``tensorflow-datasets`` is an optional
    extra that is not installed there.

    Raises:
        ImportError: If ``tensorflow-datasets`` is not installed.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise ImportError(
            f"Spec 'tfds:{name}' needs tensorflow-datasets; install it with 'pip install sphere_jax[tfds]'."
        ) from error

    rows = []
    for example in tfds.as_numpy(tfds.load(name, split=split)):
        rows.append({key: _decode(value) for key, value in example.items()})
    return rows


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        return _decode(value.item())
    return value
