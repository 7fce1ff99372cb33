"""Validation of the launcher's command-line values.

Each validator is an argparse `type=`. It returns the value (or a Path), or raises
argparse.ArgumentTypeError with a message that names the value and the expected form, so
argparse exits with status 2 before any command runs.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

# Runtime (software) version per TPU generation, from the table "PyTorch and JAX" at
# https://cloud.google.com/tpu/docs/runtimes.
RUNTIME_VERSION_BY_GENERATION = {
    "v2": "tpu-ubuntu2204-base",
    "v3": "tpu-ubuntu2204-base",
    "v4": "tpu-ubuntu2204-base",
    "v5e": "v2-alpha-tpuv5-lite",
    "v5litepod": "v2-alpha-tpuv5-lite",
    "v5p": "v2-alpha-tpuv5",
    "v6e": "v2-alpha-tpuv6e",
}

_GCE_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
_ZONE = re.compile(r"[a-z]+(-[a-z]+[0-9]+)+-[a-z]")
_PROJECT = re.compile(r"([a-z][-a-z0-9.]*:)?[a-z][-a-z0-9]{4,28}[a-z0-9]")
_ACCELERATOR_TYPE = re.compile(r"v(?P<generation>[0-9]+(e|p|litepod)?)-(?P<count>[0-9]+)")
_RUNTIME_VERSION = re.compile(r"[a-z0-9][-a-z0-9.]*")
_PYTHON_VERSION = re.compile(r"3\.[0-9]+")
_REMOTE_DIR = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
_REPO_URL = re.compile(r"(https://|ssh://|git@)\S+")


def tpu_name(value: str) -> str:
    """Validate a TPU name against the Compute Engine resource-name rules."""
    if not _GCE_NAME.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"invalid TPU name {value!r}: use 1-63 characters of lowercase letters, digits and "
            "hyphens, starting with a letter and not ending with a hyphen (e.g. sphere-tpu)"
        )
    return value


def zone(value: str) -> str:
    """Validate a Compute Engine zone name such as us-central2-b."""
    if not _ZONE.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"invalid zone {value!r}: expected REGION-ZONE such as us-central2-b or europe-west4-a"
        )
    return value


def project_id(value: str) -> str:
    """Validate a Google Cloud project ID."""
    if not _PROJECT.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"invalid project ID {value!r}: use 6-30 lowercase letters, digits and hyphens, "
            "starting with a letter (see `gcloud projects list`)"
        )
    return value


def accelerator_type(value: str) -> str:
    """Validate an accelerator type v<generation>[e|p|litepod]-<count>, e.g. v4-32."""
    match = _ACCELERATOR_TYPE.fullmatch(value)
    if match is None or int(match["count"]) == 0:
        raise argparse.ArgumentTypeError(
            f"invalid accelerator type {value!r}: expected v<generation>[e|p|litepod]-<count> "
            "such as v4-8 (one host), v4-32 (pod slice), v5litepod-8, v5p-8 or v6e-8"
        )
    return value


def runtime_version(value: str) -> str:
    """Validate a TPU runtime (software) version name such as tpu-ubuntu2204-base."""
    if not _RUNTIME_VERSION.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"invalid runtime version {value!r}: expected a name such as tpu-ubuntu2204-base "
            "(see `gcloud compute tpus tpu-vm versions list --zone=ZONE`)"
        )
    return value


def python_version(value: str) -> str:
    """Validate a Python version of the form 3.N, at least 3.11."""
    if not _PYTHON_VERSION.fullmatch(value) or int(value.split(".")[1]) < 11:
        raise argparse.ArgumentTypeError(
            f"invalid Python version {value!r}: sphere_jax needs 3.11 or newer, e.g. 3.11 or 3.12"
        )
    return value


def remote_dir(value: str) -> str:
    """Validate the name of the repository folder in the VM user's home directory."""
    if not _REMOTE_DIR.fullmatch(value) or value in {".", ".."}:
        raise argparse.ArgumentTypeError(
            f"invalid remote folder {value!r}: use one folder name of letters, digits, '.', '_' "
            "and '-' (it is created in the home directory on each worker)"
        )
    return value


def repo_url(value: str) -> str:
    """Validate a git URL that the TPU VM can clone."""
    if not _REPO_URL.fullmatch(value):
        raise argparse.ArgumentTypeError(
            f"invalid repository URL {value!r}: use an https://, ssh:// or git@host:path URL "
            "that the TPU VM can reach, or pass --source-dir to copy a local checkout"
        )
    return value


def source_dir(value: str) -> Path:
    """Validate a local sphere_jax checkout: a folder that contains pyproject.toml."""
    path = Path(value)
    if not (path / "pyproject.toml").is_file():
        raise argparse.ArgumentTypeError(
            f"invalid source folder {value!r}: pyproject.toml not found there, so pass the root "
            "of a sphere_jax checkout"
        )
    return path


def config_file(value: str) -> str:
    """Validate a config path relative to the repository root, e.g. configs/tpu_pod.yaml."""
    path = Path(value)
    if path.is_absolute() or ".." in path.parts or path.suffix not in {".yaml", ".yml"}:
        raise argparse.ArgumentTypeError(
            f"invalid config {value!r}: pass a .yaml path relative to the repository root, "
            "such as configs/tpu_v4_8.yaml"
        )
    return value


def local_config_file(value: str) -> Path:
    """Validate a local YAML file to copy to the workers."""
    path = Path(value)
    if path.suffix not in {".yaml", ".yml"}:
        raise argparse.ArgumentTypeError(
            f"invalid config {value!r}: expected a .yaml or .yml file"
        )
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"config {value!r} not found: check the path")
    return path


def run_dir(value: str) -> str:
    """Validate a run folder path on the VM, relative to the repository folder or absolute."""
    if not value or ".." in Path(value).parts or any(c.isspace() for c in value):
        raise argparse.ArgumentTypeError(
            f"invalid run folder {value!r}: pass the folder that `sphere run` wrote, e.g. "
            "runs/tpu_v4_8, without '..' or whitespace"
        )
    return value


def worker_index(value: str) -> str:
    """Validate a worker index (0 is the first host of the slice) or `all`."""
    if value != "all" and not value.isdigit():
        raise argparse.ArgumentTypeError(
            f"invalid worker {value!r}: pass a host index such as 0, or all"
        )
    return value


def default_runtime_version(accelerator: str) -> str | None:
    """Return the runtime version Google lists for the accelerator's generation, or None."""
    match = _ACCELERATOR_TYPE.fullmatch(accelerator)
    assert match is not None, "validated by accelerator_type"
    return RUNTIME_VERSION_BY_GENERATION.get("v" + match["generation"])
