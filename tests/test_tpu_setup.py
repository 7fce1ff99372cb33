"""Tests of the Cloud TPU launcher and its shell wrappers, run as real subprocesses.

Nothing here reaches Google Cloud. Dry runs are checked token by token. Real runs use a fake
`gcloud` placed first on PATH, a script that appends its argv as one JSON line to a log file
and exits with the status in FAKE_GCLOUD_EXIT.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TPU_SETUP = REPO_ROOT / "tpu_setup"
LAUNCHER = TPU_SETUP / "launch.py"

TPU_VM = ["gcloud", "compute", "tpus", "tpu-vm"]
LIBTPU_FIND_LINKS = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"
INSTALL_TAIL = [
    "cd sphere_jax",
    "python3 -m uv venv --seed --allow-existing --python 3.11 .venv",
    ". .venv/bin/activate",
    f"python -m pip install -e . 'jax[tpu]' -f {LIBTPU_FIND_LINKS}",
    "bash scripts/install_assets.sh",
]

FAKE_GCLOUD = """#!{python}
import json, os, sys
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
sys.exit(int(os.environ.get("FAKE_GCLOUD_EXIT", "0")))
"""


@pytest.fixture
def sandbox(tmp_path: Path) -> dict[str, Path]:
    """Make a fake gcloud, its log path and a private TMPDIR for the source archive."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(FAKE_GCLOUD.format(python=sys.executable))
    gcloud.chmod(0o755)
    temp_dir = tmp_path / "tmp"
    temp_dir.mkdir()
    return {"bin": bin_dir, "log": tmp_path / "gcloud_calls.jsonl", "tmp": temp_dir}


def environment(sandbox: dict[str, Path], path: str | None = None, **extra: str) -> dict[str, str]:
    """Return an environment with the fake gcloud first on PATH."""
    env = dict(os.environ)
    env["PATH"] = path if path is not None else f"{sandbox['bin']}{os.pathsep}{env['PATH']}"
    env["PYTHON"] = sys.executable
    env["TMPDIR"] = str(sandbox["tmp"])
    env["FAKE_GCLOUD_LOG"] = str(sandbox["log"])
    env.update(extra)
    return env


def launch(
    sandbox: dict[str, Path], *args: str, path: str | None = None, **extra: str
) -> subprocess.CompletedProcess[str]:
    """Run launch.py with the given arguments."""
    return subprocess.run(
        [sys.executable, str(LAUNCHER), *args],
        env=environment(sandbox, path, **extra),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )


def wrapper(sandbox: dict[str, Path], script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run one of the shell wrappers with bash."""
    return subprocess.run(
        ["bash", str(TPU_SETUP / script), *args],
        env=environment(sandbox),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )


def printed_commands(result: subprocess.CompletedProcess[str]) -> list[list[str]]:
    """Split a dry run's stdout into one token list per line."""
    assert result.returncode == 0, result.stderr
    return [shlex.split(line) for line in result.stdout.splitlines()]


def gcloud_calls(sandbox: dict[str, Path]) -> list[list[str]]:
    """Return the argv of every call the fake gcloud recorded, oldest first."""
    if not sandbox["log"].exists():
        return []
    return [json.loads(line) for line in sandbox["log"].read_text().splitlines()]


def make_checkout(root: Path) -> Path:
    """Create a small source tree with the folders that must stay out of the archive."""
    root.mkdir()
    (root / "pyproject.toml").write_text("[project]\nname = 'sphere_jax'\n")
    (root / "sphere_jax").mkdir()
    (root / "sphere_jax" / "__init__.py").write_text("")
    (root / "sphere_jax" / "__pycache__").mkdir()
    (root / "sphere_jax" / "__pycache__" / "x.pyc").write_bytes(b"\0")
    for skipped in (".venv", ".git", "runs", "sphere_jax.egg-info"):
        (root / skipped).mkdir()
        (root / skipped / "file").write_text("skip me")
    return root


# Dry runs: exact command lines.


def test_create_one_host_dry_run(sandbox):
    result = launch(
        sandbox, "create", "--name", "math-tpu", "--zone", "us-central2-b", "--dry-run"
    )

    assert printed_commands(result) == [
        [
            *TPU_VM,
            "create",
            "math-tpu",
            "--zone=us-central2-b",
            "--accelerator-type=v4-8",
            "--version=tpu-ubuntu2204-base",
        ]
    ]


def test_create_vm_wrapper_dry_run(sandbox):
    result = wrapper(sandbox, "create_vm.sh", "--project", "my-project-42", "--dry-run")

    assert printed_commands(result) == [
        [
            *TPU_VM,
            "create",
            "sphere-tpu",
            "--zone=us-central2-b",
            "--project=my-project-42",
            "--accelerator-type=v4-8",
            "--version=tpu-ubuntu2204-base",
        ]
    ]


def test_create_vm_wrapper_flags_override_defaults(sandbox):
    result = wrapper(
        sandbox, "create_vm.sh", "--name", "other-tpu", "--zone", "europe-west4-a", "--dry-run"
    )

    [command] = printed_commands(result)
    assert command[5] == "other-tpu"
    assert "--zone=europe-west4-a" in command
    assert "--zone=us-central2-b" not in command


def test_create_pod_wrapper_dry_run(sandbox):
    result = wrapper(sandbox, "create_pod.sh", "--spot", "--dry-run")

    assert printed_commands(result) == [
        [
            *TPU_VM,
            "create",
            "sphere-pod",
            "--zone=us-central2-b",
            "--accelerator-type=v4-32",
            "--version=tpu-ubuntu2204-base",
            "--spot",
        ]
    ]


@pytest.mark.parametrize(
    ("accelerator", "runtime"),
    [
        ("v3-8", "tpu-ubuntu2204-base"),
        ("v5litepod-16", "v2-alpha-tpuv5-lite"),
        ("v5p-8", "v2-alpha-tpuv5"),
        ("v6e-8", "v2-alpha-tpuv6e"),
    ],
)
def test_create_default_runtime_per_generation(sandbox, accelerator, runtime):
    result = launch(sandbox, "create", "--accelerator-type", accelerator, "--dry-run")

    [command] = printed_commands(result)
    assert f"--accelerator-type={accelerator}" in command
    assert f"--version={runtime}" in command


def test_create_explicit_runtime_and_preemptible(sandbox):
    result = launch(
        sandbox,
        "create",
        "--accelerator-type",
        "v7-8",
        "--runtime-version",
        "v2-alpha-tpu7",
        "--preemptible",
        "--dry-run",
    )

    [command] = printed_commands(result)
    assert command[-2:] == ["--version=v2-alpha-tpu7", "--preemptible"]


def test_run_everywhere_pod_dry_run(sandbox):
    result = wrapper(
        sandbox,
        "run_everywhere.sh",
        "--name",
        "sphere-pod",
        "--config",
        "configs/tpu_pod.yaml",
        "--dry-run",
        "iterations=2",
        "note=two words",
        "--",
        "--seed",
        "7",
    )

    remote = (
        "cd sphere_jax && . .venv/bin/activate && "
        "sphere run configs/tpu_pod.yaml iterations=2 'note=two words' --seed 7"
    )
    assert printed_commands(result) == [
        [*TPU_VM, "ssh", "sphere-pod", "--zone=us-central2-b", "--worker=all", f"--command={remote}"]
    ]


def test_run_one_host_default_config(sandbox):
    result = launch(sandbox, "run", "--dry-run")

    [command] = printed_commands(result)
    assert command[:6] == [*TPU_VM, "ssh", "sphere-tpu"]
    assert command[-2] == "--worker=all"
    assert command[-1] == (
        "--command=cd sphere_jax && . .venv/bin/activate && sphere run configs/tpu_v4_8.yaml"
    )


def test_run_detach_backgrounds_only_sphere(sandbox):
    result = launch(sandbox, "run", "--detach", "--remote-dir", "work", "--dry-run")

    [command] = printed_commands(result)
    assert command[-1] == (
        "--command=cd work && . .venv/bin/activate && "
        "{ nohup sphere run configs/tpu_v4_8.yaml > sphere_run.log 2>&1 < /dev/null & }"
    )


def test_install_from_repo_url_dry_run(sandbox):
    url = "https://github.com/example/sphere_jax.git"
    result = launch(sandbox, "install", "--repo-url", url, "--project", "my-project-42", "--dry-run")

    clone = (
        "if [ -d sphere_jax/.git ]; then git -C sphere_jax pull --ff-only; "
        f"else git clone {url} sphere_jax; fi"
    )
    remote = " && ".join(["python3 -m pip install --user --upgrade uv", clone, *INSTALL_TAIL])
    assert printed_commands(result) == [
        [
            *TPU_VM,
            "ssh",
            "sphere-tpu",
            "--zone=us-central2-b",
            "--project=my-project-42",
            "--worker=all",
            f"--command={remote}",
        ]
    ]


def test_install_from_source_dir_dry_run(sandbox, tmp_path):
    checkout = make_checkout(tmp_path / "checkout")
    result = launch(
        sandbox, "install", "--name", "sphere-pod", "--source-dir", str(checkout), "--dry-run"
    )

    archive = str(sandbox["tmp"] / "sphere_jax-sphere-pod.tar.gz")
    unpack = "mkdir -p sphere_jax && tar -xzf sphere_jax.tar.gz -C sphere_jax && rm sphere_jax.tar.gz"
    remote = " && ".join(["python3 -m pip install --user --upgrade uv", unpack, *INSTALL_TAIL])
    assert printed_commands(result) == [
        [
            "tar",
            "--exclude=./.venv",
            "--exclude=./.git",
            "--exclude=./runs",
            "--exclude=./.pytest_cache",
            "--exclude=*.egg-info",
            "--exclude=__pycache__",
            "-czf",
            archive,
            "-C",
            str(checkout),
            ".",
        ],
        [
            *TPU_VM,
            "scp",
            archive,
            "sphere-pod:sphere_jax.tar.gz",
            "--zone=us-central2-b",
            "--worker=all",
        ],
        [*TPU_VM, "ssh", "sphere-pod", "--zone=us-central2-b", "--worker=all", f"--command={remote}"],
    ]


def test_install_python_version_option(sandbox):
    result = launch(
        sandbox,
        "install",
        "--repo-url",
        "git@github.com:example/sphere_jax.git",
        "--python-version",
        "3.12",
        "--dry-run",
    )

    [command] = printed_commands(result)
    assert "--python 3.12 .venv" in command[-1]


def test_copy_configs_dry_run(sandbox, tmp_path):
    one_host = tmp_path / "tpu_v4_8.yaml"
    pod = tmp_path / "tpu_pod.yaml"
    one_host.write_text("seed: 0\n")
    pod.write_text("seed: 0\n")

    result = launch(sandbox, "copy-configs", str(one_host), str(pod), "--dry-run")

    assert printed_commands(result) == [
        [
            *TPU_VM,
            "scp",
            str(one_host),
            str(pod),
            "sphere-tpu:sphere_jax/configs/",
            "--zone=us-central2-b",
            "--worker=all",
        ]
    ]


def test_fetch_run_dir_dry_run(sandbox):
    result = launch(sandbox, "fetch", "runs/tpu_pod", "--dest", "results", "--dry-run")

    assert printed_commands(result) == [
        ["mkdir", "-p", "results"],
        [
            *TPU_VM,
            "scp",
            "sphere-tpu:sphere_jax/runs/tpu_pod",
            "results",
            "--zone=us-central2-b",
            "--worker=0",
            "--recurse",
        ]
    ]


def test_fetch_absolute_run_dir(sandbox):
    result = launch(sandbox, "fetch", "/mnt/disk/runs/a", "--worker", "2", "--dry-run")

    [_, scp] = printed_commands(result)
    assert scp[5] == "sphere-tpu:/mnt/disk/runs/a"
    assert "--worker=2" in scp


def test_delete_dry_run(sandbox):
    asks = printed_commands(launch(sandbox, "delete", "--dry-run"))
    quiet = printed_commands(launch(sandbox, "delete", "--yes", "--dry-run"))

    assert asks == [[*TPU_VM, "delete", "sphere-tpu", "--zone=us-central2-b"]]
    assert quiet == [[*TPU_VM, "delete", "sphere-tpu", "--zone=us-central2-b", "--quiet"]]


# Invalid input: exit status 2 and a message that names the value.


@pytest.mark.parametrize(
    ("args", "value"),
    [
        (["create", "--name", "Sphere_TPU"], "Sphere_TPU"),
        (["create", "--name", "1tpu"], "1tpu"),
        (["create", "--name", "tpu-"], "tpu-"),
        (["run", "--name", "t" * 64], "t" * 64),
        (["create", "--accelerator-type", "v4"], "v4"),
        (["create", "--accelerator-type", "tpu-8"], "tpu-8"),
        (["create", "--accelerator-type", "v4-0"], "v4-0"),
        (["create", "--accelerator-type", "v4-eight"], "v4-eight"),
        (["create", "--accelerator-type", "v4x-8"], "v4x-8"),
        (["create", "--zone", "us-central2"], "us-central2"),
        (["delete", "--project", "My Project"], "My Project"),
        (["create", "--runtime-version", "Base Image"], "Base Image"),
        (["install", "--python-version", "3.10"], "3.10"),
        (["install", "--repo-url", "github.com/x/y"], "github.com/x/y"),
        (["install", "--source-dir", "/no/such/checkout"], "/no/such/checkout"),
        (["install", "--remote-dir", "../outside"], "../outside"),
        (["run", "--config", "/etc/tpu.yaml"], "/etc/tpu.yaml"),
        (["run", "--config", "configs/tpu.json"], "configs/tpu.json"),
        (["copy-configs", "missing.yaml"], "missing.yaml"),
        (["fetch", "../runs"], "../runs"),
        (["fetch", "runs/a", "--worker", "first"], "first"),
        (["create", "--accelerator-type", "v7-8"], "v7-8"),
    ],
)
def test_invalid_value_rejected(sandbox, args, value):
    result = launch(sandbox, *args, "--dry-run")

    assert result.returncode == 2
    assert repr(value) in result.stderr
    assert result.stdout == ""


def test_spot_and_preemptible_rejected_together(sandbox):
    result = launch(sandbox, "create", "--spot", "--preemptible", "--dry-run")

    assert result.returncode == 2
    assert "not allowed with argument" in result.stderr


# Execution: nothing runs in a dry run, and a real run calls exactly the printed commands.


def test_dry_run_executes_nothing(sandbox, tmp_path):
    checkout = make_checkout(tmp_path / "checkout")
    runs = [
        launch(sandbox, "create", "--dry-run"),
        launch(sandbox, "install", "--source-dir", str(checkout), "--dry-run"),
        launch(sandbox, "run", "--dry-run"),
        launch(sandbox, "fetch", "runs/a", "--dest", str(tmp_path / "fetched"), "--dry-run"),
        launch(sandbox, "delete", "--yes", "--dry-run"),
        wrapper(sandbox, "create_pod.sh", "--dry-run"),
        wrapper(sandbox, "run_everywhere.sh", "--dry-run"),
    ]

    assert [result.returncode for result in runs] == [0] * len(runs)
    assert not sandbox["log"].exists()
    assert list(sandbox["tmp"].iterdir()) == []
    assert not (tmp_path / "fetched").exists()


def test_real_run_calls_printed_commands(sandbox):
    steps = [
        ["create", "--name", "sphere-pod", "--accelerator-type", "v4-32"],
        ["run", "--name", "sphere-pod", "--config", "configs/tpu_pod.yaml", "iterations=2"],
        ["delete", "--name", "sphere-pod", "--yes"],
    ]
    expected: list[list[str]] = []
    for step in steps:
        expected += printed_commands(launch(sandbox, *step, "--dry-run"))

    for step in steps:
        result = launch(sandbox, *step)
        assert result.returncode == 0, result.stderr
        assert "running: gcloud compute tpus tpu-vm" in result.stderr

    assert gcloud_calls(sandbox) == [command[1:] for command in expected]


def test_real_install_packs_and_copies_source(sandbox, tmp_path):
    checkout = make_checkout(tmp_path / "checkout")
    dry = printed_commands(launch(sandbox, "install", "--source-dir", str(checkout), "--dry-run"))

    result = launch(sandbox, "install", "--source-dir", str(checkout))

    assert result.returncode == 0, result.stderr
    assert gcloud_calls(sandbox) == [dry[1][1:], dry[2][1:]]
    with tarfile.open(sandbox["tmp"] / "sphere_jax-sphere-tpu.tar.gz") as archive:
        members = {name.removeprefix("./") for name in archive.getnames()}
    assert "pyproject.toml" in members
    assert "sphere_jax/__init__.py" in members
    for skipped in (".venv", ".git", "runs", "sphere_jax.egg-info", "sphere_jax/__pycache__"):
        assert not any(name == skipped or name.startswith(skipped + "/") for name in members)


def test_real_fetch_creates_destination(sandbox, tmp_path):
    destination = tmp_path / "local" / "runs"

    result = launch(sandbox, "fetch", "runs/tpu_pod", "--dest", str(destination))

    assert result.returncode == 0, result.stderr
    assert destination.is_dir()
    assert gcloud_calls(sandbox) == [
        [
            "compute",
            "tpus",
            "tpu-vm",
            "scp",
            "sphere-tpu:sphere_jax/runs/tpu_pod",
            str(destination),
            "--zone=us-central2-b",
            "--worker=0",
            "--recurse",
        ]
    ]


def test_wrapper_real_run_calls_gcloud(sandbox):
    result = wrapper(sandbox, "create_vm.sh", "--zone", "europe-west4-a")

    assert result.returncode == 0, result.stderr
    assert gcloud_calls(sandbox) == [
        [
            "compute",
            "tpus",
            "tpu-vm",
            "create",
            "sphere-tpu",
            "--zone=europe-west4-a",
            "--accelerator-type=v4-8",
            "--version=tpu-ubuntu2204-base",
        ]
    ]


def test_missing_gcloud_reports_path(sandbox, tmp_path):
    empty_bin = tmp_path / "empty_bin"
    empty_bin.mkdir()

    result = launch(sandbox, "create", path=str(empty_bin))

    assert result.returncode == 127
    assert "gcloud not found on PATH" in result.stderr
    assert "--dry-run" in result.stderr


def test_failing_gcloud_stops_at_first_failure(sandbox, tmp_path):
    checkout = make_checkout(tmp_path / "checkout")

    result = launch(sandbox, "install", "--source-dir", str(checkout), FAKE_GCLOUD_EXIT="3")

    assert result.returncode == 3
    assert "command failed with exit status 3: gcloud compute tpus tpu-vm scp" in result.stderr
    calls = gcloud_calls(sandbox)
    assert len(calls) == 1
    assert calls[0][:4] == ["compute", "tpus", "tpu-vm", "scp"]
