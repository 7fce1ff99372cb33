#!/usr/bin/env python3
"""Create a Cloud TPU VM, install sphere_jax on it and run the same command on every worker.

Each subcommand builds `gcloud compute tpus tpu-vm ...` command lines, plus a local `tar`
when `install` copies the repository and a local `mkdir` before `fetch`. With `--dry-run`
the launcher prints each command, shell-quoted, one per line on stdout, and runs nothing.
Without it, the launcher runs them in order with `subprocess.run(check=True)` and stops at
the first failure.

Examples:
    python3 tpu_setup/launch.py create --name sphere-tpu --zone us-central2-b --dry-run
    python3 tpu_setup/launch.py install --name sphere-tpu --zone us-central2-b
    python3 tpu_setup/launch.py run --name sphere-tpu --config configs/tpu_v4_8.yaml

The launcher uses only the standard library and runs on Python 3.8 or newer, so it does
not need sphere_jax or its virtual environment on the machine that drives the TPU.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from tpu_commands import (
    TpuTarget,
    copy_configs_commands,
    create_commands,
    delete_commands,
    fetch_commands,
    install_commands,
    run_commands,
)
from tpu_inputs import (
    accelerator_type,
    config_file,
    default_runtime_version,
    local_config_file,
    project_id,
    python_version,
    remote_dir,
    repo_url,
    run_dir,
    runtime_version,
    source_dir,
    tpu_name,
    worker_index,
    zone,
)

log = logging.getLogger("tpu_setup.launch")

REPO_ROOT = Path(__file__).resolve().parents[1]

DEFAULT_NAME = "sphere-tpu"
DEFAULT_ZONE = "us-central2-b"
DEFAULT_ACCELERATOR_TYPE = "v4-8"
DEFAULT_REMOTE_DIR = "sphere_jax"
DEFAULT_PYTHON_VERSION = "3.11"
DEFAULT_RUN_CONFIG = "configs/tpu_v4_8.yaml"


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with one subcommand per step."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--name", type=tpu_name, default=DEFAULT_NAME, help="TPU VM name (default: %(default)s)"
    )
    common.add_argument(
        "--zone", type=zone, default=DEFAULT_ZONE, help="Compute Engine zone (default: %(default)s)"
    )
    common.add_argument(
        "--project",
        type=project_id,
        default=None,
        help="Google Cloud project ID (default: the project in the gcloud config)",
    )
    common.add_argument(
        "--dry-run", action="store_true", help="print each command, one per line, and run nothing"
    )

    folder = argparse.ArgumentParser(add_help=False)
    folder.add_argument(
        "--remote-dir",
        type=remote_dir,
        default=DEFAULT_REMOTE_DIR,
        help="repository folder in the home directory of each worker (default: %(default)s)",
    )

    parser = argparse.ArgumentParser(prog="launch.py", description=__doc__.split("\n\n")[0])
    subcommands = parser.add_subparsers(dest="subcommand", required=True, metavar="SUBCOMMAND")

    create = subcommands.add_parser("create", parents=[common], help="create a TPU VM or pod slice")
    create.add_argument(
        "--accelerator-type",
        type=accelerator_type,
        default=DEFAULT_ACCELERATOR_TYPE,
        help="TPU type and size: v4-8 is one host, v4-16 and larger are pod slices "
        "(default: %(default)s)",
    )
    create.add_argument(
        "--runtime-version",
        type=runtime_version,
        default=None,
        help="TPU software version (default: the version Google lists for the generation, "
        "tpu-ubuntu2204-base for v2 to v4)",
    )
    provisioning = create.add_mutually_exclusive_group()
    provisioning.add_argument(
        "--spot", action="store_const", const="spot", dest="provisioning", help="create a Spot VM"
    )
    provisioning.add_argument(
        "--preemptible",
        action="store_const",
        const="preemptible",
        dest="provisioning",
        help="create a preemptible VM",
    )

    install = subcommands.add_parser(
        "install",
        parents=[common, folder],
        help="put the repository on every worker and pip install it with jax[tpu]",
    )
    origin = install.add_mutually_exclusive_group()
    origin.add_argument(
        "--repo-url", type=repo_url, default=None, help="git URL that each worker clones"
    )
    origin.add_argument(
        "--source-dir",
        type=source_dir,
        default=None,
        help="local checkout to pack and copy when --repo-url is not given "
        "(default: the checkout that contains this script)",
    )
    install.add_argument(
        "--python-version",
        type=python_version,
        default=DEFAULT_PYTHON_VERSION,
        help="Python version of the virtual environment on the workers (default: %(default)s)",
    )

    copy = subcommands.add_parser(
        "copy-configs",
        parents=[common, folder],
        help="copy local config files to REMOTE_DIR/configs/ on every worker",
    )
    copy.add_argument(
        "configs",
        nargs="*",
        type=local_config_file,
        metavar="CONFIG",
        help="YAML files to copy (default: every configs/*.yaml of this checkout)",
    )

    run = subcommands.add_parser(
        "run",
        parents=[common, folder],
        help="run `sphere run CONFIG [OVERRIDE...]` on every worker",
    )
    run.add_argument(
        "--config",
        type=config_file,
        default=DEFAULT_RUN_CONFIG,
        help="config path relative to the repository root (default: %(default)s)",
    )
    run.add_argument(
        "overrides",
        nargs="*",
        metavar="OVERRIDE",
        help="extra arguments passed to `sphere run` unchanged (put them after `--` "
        "if they start with '-')",
    )
    run.add_argument(
        "--detach",
        action="store_true",
        help="start the run with nohup and return at once, with the output in "
        "REMOTE_DIR/sphere_run.log on each worker",
    )

    fetch = subcommands.add_parser(
        "fetch", parents=[common, folder], help="copy a run folder from one worker to this machine"
    )
    fetch.add_argument(
        "run_dir",
        type=run_dir,
        metavar="RUN_DIR",
        help="run folder on the worker, relative to REMOTE_DIR",
    )
    fetch.add_argument(
        "--dest", default=".", help="local folder to copy into (default: the current folder)"
    )
    fetch.add_argument(
        "--worker",
        type=worker_index,
        default="0",
        help="host index to copy from (default: %(default)s)",
    )

    delete = subcommands.add_parser("delete", parents=[common], help="delete the TPU VM")
    delete.add_argument(
        "--yes",
        action="store_true",
        help="pass --quiet so that gcloud does not ask for confirmation",
    )
    return parser


def commands_for(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[list[str]]:
    """Turn parsed arguments into the list of commands to print or run."""
    target = TpuTarget(name=args.name, zone=args.zone, project=args.project)
    if args.subcommand == "create":
        runtime = args.runtime_version or default_runtime_version(args.accelerator_type)
        if runtime is None:
            parser.error(
                f"no default runtime version for accelerator type {args.accelerator_type!r}: "
                "pass --runtime-version "
                "(see `gcloud compute tpus tpu-vm versions list --zone=ZONE`)"
            )
        return create_commands(target, args.accelerator_type, runtime, args.provisioning)

    if args.subcommand == "install":
        source = None
        if args.repo_url is None:
            source = args.source_dir or REPO_ROOT
            if not (source / "pyproject.toml").is_file():
                parser.error(
                    f"no pyproject.toml in {str(source)!r}: pass --source-dir or --repo-url"
                )
        return install_commands(target, args.repo_url, source, args.remote_dir, args.python_version)

    if args.subcommand == "copy-configs":
        configs = args.configs or sorted((REPO_ROOT / "configs").glob("*.yaml"))
        if not configs:
            parser.error(
                f"no CONFIG given and no *.yaml in {str(REPO_ROOT / 'configs')!r}: "
                "pass CONFIG paths"
            )
        return copy_configs_commands(target, configs, args.remote_dir)

    if args.subcommand == "run":
        return run_commands(target, args.config, args.overrides, args.remote_dir, args.detach)

    if args.subcommand == "fetch":
        return fetch_commands(target, args.run_dir, args.dest, args.remote_dir, args.worker)

    assert args.subcommand == "delete", args.subcommand
    return delete_commands(target, args.yes)


def execute(commands: list[list[str]]) -> int:
    """Run the commands in order and return 0, or the exit status of the first that fails."""
    for program in dict.fromkeys(command[0] for command in commands):
        if shutil.which(program) is None:
            hint = f"install {program}"
            if program == "gcloud":
                hint = (
                    "install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install) "
                    "and run `gcloud auth login`"
                )
            log.error(
                "%s not found on PATH: %s, or pass --dry-run to print the commands", program, hint
            )
            return 127
    for command in commands:
        log.info("running: %s", shlex.join(command))
        try:
            subprocess.run(command, check=True)
        except subprocess.CalledProcessError as error:
            log.error(
                "command failed with exit status %d: %s", error.returncode, shlex.join(command)
            )
            return error.returncode
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, then print or run the commands of the chosen subcommand."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    parser = build_parser()
    args = parser.parse_args(argv)
    commands = commands_for(args, parser)
    if args.dry_run:
        for command in commands:
            print(shlex.join(command))
        return 0
    return execute(commands)


if __name__ == "__main__":
    sys.exit(main())
