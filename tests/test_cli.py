"""The `sphere` command: invalid configs fail fast, and the smoke config runs end to end and resumes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sphere_jax.pipeline.config import load_run_config
from sphere_jax.typed_config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SPHERE = [sys.executable, "-m", "sphere_jax.cli.main"]


def sphere(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")
    return subprocess.run([*SPHERE, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.learning_rate=1e-6", "unknown key 'train.learning_rate'; allowed keys in train: batch_size"),
        ("generate.search.candidates=five", "generate.search.candidates='five' has the wrong type; expected an integer"),
        ("eval.mode=beam", "eval.mode='beam' is not allowed; allowed values: 'greedy', 'sample'"),
        ("mesh.data=3", "mesh={'data': 3, 'fsdp': -1, 'tensor': 1} does not fit the 1 available devices"),
        ("policy.source=packaged:nope", "policy.source: unknown packaged model 'nope'"),
        ("small_model.source=/no/such/model.gguf", "small_model.source: model source '/no/such/model.gguf' not found"),
        ("generate.reward.backend=magic", "reward.backend='magic' is not one of prm, rollout, self_judge"),
        ("sampler.matmul_dtype=int8", "sampler: matmul_dtype='int8' is not supported; use one of None, 'float32'"),
    ],
)
def test_invalid_config_raises(override, message):
    with pytest.raises(ConfigError) as raised:
        load_run_config(ROOT / "configs" / "smoke.yaml", [override])
    assert message in str(raised.value)


def test_invalid_config_exits_before_work(tmp_path):
    result = sphere("run", "configs/smoke.yaml", f"run_dir={tmp_path / 'run'}", "train.learning_rate=1e-6")
    assert result.returncode == 2
    assert "unknown key 'train.learning_rate'" in result.stderr
    assert not (tmp_path / "run").exists()  # nothing was started


@pytest.mark.parametrize("name", ["smoke", "cpu_demo", "gpu_single", "tpu_v4_8"])
def test_shipped_configs_are_valid(name):
    from sphere_jax.typed_config import from_dict, load_yaml
    from sphere_jax.pipeline.config import RunConfig

    config = from_dict(RunConfig, load_yaml(ROOT / "configs" / f"{name}.yaml"))
    assert config.iterations >= 1
    assert config.policy.source


def test_missing_config_file():
    result = sphere("run", "configs/no_such.yaml")
    assert result.returncode == 2
    assert "config file configs/no_such.yaml not found" in result.stderr


@pytest.mark.slow
def test_smoke_run_end_to_end_with_resume(tmp_path):
    run_dir = tmp_path / "smoke"
    env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu")
    command = [*SPHERE, "run", "configs/smoke.yaml", f"run_dir={run_dir}"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_path = run_dir / "state.json"
    deadline = time.monotonic() + 900
    # Kill as soon as the base evaluation is recorded, while generation is under way.
    while time.monotonic() < deadline and process.poll() is None and not state_path.exists():
        time.sleep(0.2)
    assert process.poll() is None, "the run ended before it could be interrupted"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    before = json.loads(state_path.read_text())
    assert list(before["done"]) == ["eval:base"]

    resumed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    state = json.loads((run_dir / "state.json").read_text())
    assert list(state["done"]) == ["eval:base", "generate:0", "train:0", "eval:0", "export"]
    assert state["seconds"]["eval:base"] == before["seconds"]["eval:base"]  # not redone on resume
    stats = state["done"]["generate:0"]
    assert stats["problems"] == 4
    assert sum(stats["problems_per_route"].values()) == 4
    for name in ("config.yaml", "metrics.jsonl", "summary.md", "plots/accuracy.png", "logs/sphere.log",
                 "iter0/generate/pairs.jsonl", "iter0/generate/trees.jsonl", "eval/base/gsm8k_test.json",
                 "eval/iter0/gsm8k_test.json", "export/config.json"):
        assert (run_dir / name).exists(), name
    assert list((run_dir / "tensorboard").iterdir())
    assert "| gsm8k:test |" in (run_dir / "summary.md").read_text()

    import torch
    import transformers

    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        run_dir / "export", dtype=torch.float32, output_loading_info=True
    )
    assert not info["missing_keys"]
    assert not info["unexpected_keys"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(run_dir / "export")
    ids = tokenizer("2 + 2 =", return_tensors="pt")["input_ids"]
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3


def test_train_without_pairs_file(tmp_path):
    result = sphere("train", "configs/smoke.yaml", f"run_dir={tmp_path / 'run'}", "--pairs", str(tmp_path / "none.jsonl"))
    assert result.returncode == 2
    assert f"pairs file {tmp_path / 'none.jsonl'} not found" in result.stderr


@pytest.mark.slow
def test_eval_with_bf16_matmuls_writes_report(tmp_path):
    result = sphere(
        "eval", "--model", "packaged:smollm2-135m-instruct", "--benchmarks", "gsm8k:test", "--limit", "2",
        "--max-new-tokens", "16", "--batch-size", "2", "--matmul-dtype", "bfloat16",
        "--output-dir", str(tmp_path), timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "gsm8k_test.json").read_text())
    records = [json.loads(line) for line in (tmp_path / "gsm8k_test.jsonl").read_text().splitlines()]
    assert report["num_problems"] == 2
    assert [record["id"] for record in records] == ["gsm8k:test:0", "gsm8k:test:1"]
    samples = [record["samples"][0] for record in records]
    assert [sample["num_tokens"] for sample in samples] == [16, 16]
    assert all(sample["output"].strip() for sample in samples)
