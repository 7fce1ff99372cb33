"""Two JAX processes on localhost train DPO exactly as one process does.

Each child process gets 4 fake CPU devices and joins a `jax.distributed` job whose coordinator listens on
127.0.0.1. Together they train the tiny decoder on a (data 2, fsdp 4) mesh over all 8 devices. Both compute
the reference log-probs and write the checkpoint together. A third process trains the
same model on one device. The per-step losses and gradient norms must agree.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from test_trainer import tokenizer, write_gsm8k_pairs  # noqa: F401  (tokenizer is a fixture)

CHILD_SCRIPT = textwrap.dedent(
    """
    import json, sys
    process_id, num_processes, port, pairs_path, out_path, tests_dir, checkpoint_dir = sys.argv[1:8]
    import jax
    if int(num_processes) > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{port}", num_processes=int(num_processes), process_id=int(process_id)
        )
    sys.path.insert(0, tests_dir)
    from test_trainer import tiny_config, tiny_model
    from sphere_jax.training import mesh
    from sphere_jax.training.checkpointing import CheckpointConfig
    from sphere_jax.training.trainer import DPOTrainer
    from sphere_jax.weights.load import load_tokenizer, resolve_folder

    tokenizer = load_tokenizer(resolve_folder("packaged:smollm2-135m-instruct"))
    shape = {"data": 2, "fsdp": 4} if int(num_processes) > 1 else {}
    devices = jax.devices() if int(num_processes) > 1 else jax.devices()[:1]
    config = tiny_config(batch_size=8, max_length=96, mesh_shape=None,
                         checkpoint=CheckpointConfig(directory=checkpoint_dir, save_interval_steps=2))
    trainer = DPOTrainer(tiny_model(len(tokenizer)), tokenizer, pairs_path, config,
                         mesh=mesh.make_mesh(shape, devices=devices))
    history = trainer.train(3)
    trainer.close()
    if jax.process_index() == 0:
        result = {
            "process_count": jax.process_count(),
            "devices": len(jax.devices()),
            "local_devices": len(jax.local_devices()),
            "loss": [m["loss"] for m in history],
            "grad_norm": [m["grad_norm"] for m in history],
            "reference_logps": trainer.reference_logps[:4].tolist(),
        }
        with open(out_path, "w") as out:
            json.dump(result, out)
    """
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(process_id: int, num_processes: int, port: int, pairs: Path, out: Path, checkpoints: Path, devices: int):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    args = [str(process_id), str(num_processes), str(port), str(pairs), str(out), str(Path(__file__).parent),
            str(checkpoints)]
    return subprocess.Popen([sys.executable, "-c", CHILD_SCRIPT, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = 600) -> None:
    try:
        _, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        _, stderr = process.communicate()
        pytest.fail(f"process timed out after {timeout} s: {stderr[-3000:]}")
    assert process.returncode == 0, stderr[-5000:]


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path, tokenizer):
    pairs = write_gsm8k_pairs(tokenizer, tmp_path / "pairs.jsonl", 8)
    # Each run gets its own copy, so neither finds the other's stored reference log-probs.
    single_pairs = tmp_path / "single" / "pairs.jsonl"
    single_pairs.parent.mkdir()
    single_pairs.write_text(pairs.read_text())

    port = free_port()
    workers = [launch(i, 2, port, pairs, tmp_path / "two.json", tmp_path / "two_ckpt", 4) for i in range(2)]
    for worker in workers:
        finish(worker)
    single = launch(0, 1, 0, single_pairs, tmp_path / "one.json", tmp_path / "one_ckpt", 1)
    finish(single)

    two = json.loads((tmp_path / "two.json").read_text())
    single_run = json.loads((tmp_path / "one.json").read_text())
    print({"two": two, "one": single_run})
    assert (two["process_count"], two["devices"], two["local_devices"]) == (2, 8, 4)
    assert (single_run["process_count"], single_run["devices"]) == (1, 1)
    for a, b in zip(two["reference_logps"], single_run["reference_logps"], strict=True):
        for x, y in zip(a, b, strict=True):
            assert abs(x - y) <= 1e-5 * abs(y)
    for name in ("loss", "grad_norm"):
        assert len(two[name]) == len(single_run[name]) == 3
        for x, y in zip(two[name], single_run[name], strict=True):
            assert abs(x - y) / abs(y) <= 1e-5, (name, two[name], single_run[name])
    # Both processes wrote the checkpoint of step 3 together.
    assert (tmp_path / "two_ckpt" / "3").is_dir()
