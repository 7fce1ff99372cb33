"""Builders of the gcloud and tar command lines that the launcher prints or runs.

Every function here is pure: it maps validated values to argv lists and touches nothing.
"""

from __future__ import annotations

import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path

# pip looks up libtpu wheels on this page as well as on PyPI.
LIBTPU_FIND_LINKS = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"

# Local paths that never go into the archive copied to the VM: the local virtual
# environment, git metadata, build and test caches, and run outputs.
ARCHIVE_EXCLUDES = (
    "./.venv",
    "./.git",
    "./runs",
    "./.pytest_cache",
    "*.egg-info",
    "__pycache__",
)


@dataclass(frozen=True)
class TpuTarget:
    """The TPU VM that every gcloud command addresses."""

    name: str
    zone: str
    project: str | None

    def location_flags(self) -> list[str]:
        """Return the --zone and optional --project flags."""
        flags = [f"--zone={self.zone}"]
        if self.project:
            flags.append(f"--project={self.project}")
        return flags


def gcloud_tpu_vm(verb: str) -> list[str]:
    """Return the argv prefix of a `gcloud compute tpus tpu-vm VERB` command."""
    return ["gcloud", "compute", "tpus", "tpu-vm", verb]


def ssh_command(target: TpuTarget, remote_command: str, worker: str = "all") -> list[str]:
    """Build a gcloud ssh command that runs `remote_command` in bash on the given workers."""
    return [
        *gcloud_tpu_vm("ssh"),
        target.name,
        *target.location_flags(),
        f"--worker={worker}",
        f"--command={remote_command}",
    ]


def scp_command(
    target: TpuTarget,
    sources: list[str],
    destination: str,
    worker: str = "all",
    recurse: bool = False,
) -> list[str]:
    """Build a gcloud scp command. Remote paths are written TPU_NAME:PATH."""
    command = [*gcloud_tpu_vm("scp"), *sources, destination, *target.location_flags()]
    command.append(f"--worker={worker}")
    if recurse:
        command.append("--recurse")
    return command


def create_commands(
    target: TpuTarget, accelerator: str, runtime: str, provisioning: str | None
) -> list[list[str]]:
    """Build the command that creates the TPU VM (one host or a pod slice)."""
    command = [
        *gcloud_tpu_vm("create"),
        target.name,
        *target.location_flags(),
        f"--accelerator-type={accelerator}",
        f"--version={runtime}",
    ]
    if provisioning is not None:
        command.append(f"--{provisioning}")
    return [command]


def local_archive_path(name: str) -> Path:
    """Return where the source archive for TPU `name` is written on this machine."""
    return Path(tempfile.gettempdir()) / f"sphere_jax-{name}.tar.gz"


def archive_command(source: Path, archive: Path) -> list[str]:
    """Build the tar command that packs a local checkout without its venv, git data or runs."""
    excludes = [f"--exclude={pattern}" for pattern in ARCHIVE_EXCLUDES]
    return ["tar", *excludes, "-czf", str(archive), "-C", str(source), "."]


def install_commands(
    target: TpuTarget,
    repo: str | None,
    source: Path | None,
    folder: str,
    python: str,
) -> list[list[str]]:
    """Build the commands that put the repository on every worker and install it with jax[tpu].

    With `repo` the workers clone it (or fast-forward an existing clone). Otherwise the local
    `source` checkout is packed with tar, copied to every worker and unpacked over `folder`.
    Each worker then gets a virtual environment `folder/.venv` with Python `python`, made by
    uv, because Ubuntu 22.04 (the base of tpu-ubuntu2204-base) ships Python 3.10 and
    sphere_jax needs 3.11 or newer. uv downloads that Python when the image lacks it.
    """
    commands: list[list[str]] = []
    # NOTE: `pip install --user` needs a system Python that allows user installs. An image
    # that marks it externally managed (PEP 668, as Ubuntu 24.04 does) rejects this step.
    steps = ["python3 -m pip install --user --upgrade uv"]
    quoted_folder = shlex.quote(folder)
    if repo is not None:
        steps.append(
            f"if [ -d {quoted_folder}/.git ]; then git -C {quoted_folder} pull --ff-only; "
            f"else git clone {shlex.quote(repo)} {quoted_folder}; fi"
        )
    else:
        assert source is not None, "a source folder is required without a repository URL"
        archive = local_archive_path(target.name)
        remote_archive = f"{folder}.tar.gz"
        commands.append(archive_command(source, archive))
        commands.append(scp_command(target, [str(archive)], f"{target.name}:{remote_archive}"))
        steps.append(
            f"mkdir -p {quoted_folder} && tar -xzf {shlex.quote(remote_archive)} "
            f"-C {quoted_folder} && rm {shlex.quote(remote_archive)}"
        )
    steps += [
        f"cd {quoted_folder}",
        f"python3 -m uv venv --seed --allow-existing --python {python} .venv",
        ". .venv/bin/activate",
        f"python -m pip install -e . 'jax[tpu]' -f {LIBTPU_FIND_LINKS}",
        "bash scripts/install_assets.sh",
    ]
    commands.append(ssh_command(target, " && ".join(steps)))
    return commands


def copy_configs_commands(
    target: TpuTarget, configs: list[Path], folder: str
) -> list[list[str]]:
    """Build the command that copies local config files to `folder/configs/` on every worker."""
    destination = f"{target.name}:{folder}/configs/"
    return [scp_command(target, [str(path) for path in configs], destination)]


def run_commands(
    target: TpuTarget, config: str, overrides: list[str], folder: str, detach: bool
) -> list[list[str]]:
    """Build the command that starts `sphere run CONFIG [overrides...]` on every worker at once.

    All workers of a pod slice must start the same program, because each one calls
    `jax.distributed.initialize()` and waits for the others.
    """
    sphere = shlex.join(["sphere", "run", config, *overrides])
    if detach:
        # Only this command goes to the background, with every stream redirected, so the
        # remote shell exits, ssh returns and a closed connection does not stop the run.
        sphere = f"{{ nohup {sphere} > sphere_run.log 2>&1 < /dev/null & }}"
    steps = [f"cd {shlex.quote(folder)}", ". .venv/bin/activate", sphere]
    return [ssh_command(target, " && ".join(steps))]


def fetch_commands(
    target: TpuTarget, remote_run_dir: str, destination: str, folder: str, worker: str
) -> list[list[str]]:
    """Build the commands that copy a run folder from one worker into a local folder.

    The local folder is created first because `scp --recurse` copies the run folder under
    the destination's name when the destination does not exist yet.
    """
    remote_path = remote_run_dir
    if not remote_run_dir.startswith("/"):
        remote_path = f"{folder}/{remote_run_dir}"
    source = f"{target.name}:{remote_path}"
    return [
        ["mkdir", "-p", destination],
        scp_command(target, [source], destination, worker=worker, recurse=True),
    ]


def delete_commands(target: TpuTarget, assume_yes: bool) -> list[list[str]]:
    """Build the command that deletes the TPU VM, without a confirmation prompt if assume_yes."""
    command = [*gcloud_tpu_vm("delete"), target.name, *target.location_flags()]
    if assume_yes:
        command.append("--quiet")
    return [command]
