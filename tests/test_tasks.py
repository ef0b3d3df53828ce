"""Programming tasks (`edgespec quality --tasks`): every task can be passed and failed, replies'
code is found, the sandbox contains what it runs, and a run reports every task."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from click.testing import CliRunner
from edgespec.apps.cli import cli
from edgespec.quant.tasks import (Task, complete_block, extract_code, forbidden_use, format_row, load_tasks,
                                  run_check, run_row, score, tasks_report)

TASKS = load_tasks()


def _task(oracle: str = "def f(x):\n    return x\n") -> Task:
    """A one-function task with two cases, f(1) and f(2)."""
    return Task(name="f", signature="def f(x: int) -> int", description="Return x.", forbid=(), mutates=False,
                oracle=oracle, cases="def cases(rng):\n    return [(1,), (2,)]\n", reference=oracle, wrong="")


# --- the task file ------------------------------------------------------------------------------

def test_at_least_40_tasks_with_distinct_names_and_matching_signatures():
    assert len(TASKS) >= 40
    assert len({t.name for t in TASKS}) == len(TASKS)
    for t in TASKS:
        assert t.signature.startswith(f"def {t.name}("), t.name
        assert t.signature in t.prompt() and t.description in t.prompt()


def test_every_reference_passes_and_every_wrong_solution_fails():
    def both(t):
        return t, run_check(t, t.reference), run_check(t, t.wrong)

    with ThreadPoolExecutor(2) as pool:
        for t, ref, wrong in pool.map(both, TASKS):
            assert ref["passed"], (t.name, ref)
            assert ref["cases_passed"] == ref["cases"] >= 100, t.name
            assert not wrong["passed"], (t.name, "the wrong solution passes: the cases miss its mistake")
            assert wrong["reason"].startswith("case "), (t.name, wrong)
            assert forbidden_use(t.reference, t.forbid) is None, t.name


def test_prompt_states_what_is_forbidden():
    task = next(t for t in TASKS if t.name == "title")
    assert "Do not use `.title`." in task.prompt()
    task = next(t for t in TASKS if t.name == "normpath")
    assert "Do not import `os`, `posixpath`, `pathlib`, `ntpath`." in task.prompt()


# --- finding the code in a reply -------------------------------------------------------------------

FUNC = "def f(x):\n    return x + 1\n"


@pytest.mark.parametrize("reply, code", [
    (f"Here is the function:\n\n```python\n{FUNC}```\n\nIt adds one.", FUNC),
    (f"```py\nimport math\n\n{FUNC}```", "import math\n\n" + FUNC),
    (f"Usage:\n```python\nprint(f(1))\n```\nCode:\n```python\n{FUNC}```", FUNC),  # the block that defines f
    (f"```\n{FUNC}```", FUNC),  # a fence without a language
    (f"```python\n{FUNC}\nprint(f(2))\nassert f(1) == 2\nif __name__ == '__main__':\n    f(3)\n```", FUNC),
    (f"```python\nLIMIT = 3\n\n@staticmethod\n{FUNC}```", "LIMIT = 3\n\n@staticmethod\n" + FUNC),
    (f"```python\n{FUNC}\nfor i in range(3):\n    print(f(i))", FUNC),  # cut off by max_tokens: no closing fence
    (f"Sure.\n{FUNC}\nThis returns x plus one.", FUNC),  # bare code between prose
    (FUNC, FUNC),
    ("```python\ndef f(x) return x\n```", "def f(x) return x\n"),  # unparsable: kept for the sandbox's error
    ("I cannot write that function.", None),
    ("```python\ndef g(x):\n    return x\n```", None),  # a block, but not the function asked for
    ("", None),
])
def test_extract_code_from_recorded_replies(reply, code):
    assert extract_code(reply, "f") == code


def test_complete_block_needs_a_closed_block_defining_the_function():
    assert complete_block(f"```python\n{FUNC}```", "f")
    assert not complete_block(f"```python\n{FUNC}", "f")  # still being written
    assert not complete_block("```python\nprint(1)\n```", "f")
    assert not complete_block(f"```python\n{FUNC}```", "ff")


@pytest.mark.parametrize("code, message", [
    ("import bisect\ndef f(a, x):\n    return bisect.bisect_left(a, x)\n", "imports bisect, which the task forbids"),
    ("from os.path import normpath as f\n", "imports os.path, which the task forbids"),
    ("def f(x):\n    m = __import__('bisect')\n    return m\n", "imports bisect, which the task forbids"),
    ("def f(s):\n    return s.title()\n", "uses .title, which the task forbids"),
    ("import math\ndef f(s):\n    return s.upper()\n", None),
])
def test_forbidden_use(code, message):
    assert forbidden_use(code, ("bisect", "os", ".title")) == message


def test_score_refuses_forbidden_code_and_missing_code():
    task = next(t for t in TASKS if t.name == "bisect_left")
    reply = "```python\nimport bisect\ndef bisect_left(a, x):\n    return bisect.bisect_left(a, x)\n```"
    assert score(task, reply)["reason"] == "imports bisect, which the task forbids"
    verdict = score(task, "Use the bisect module.")
    assert verdict == {"passed": False, "reason": "no code defining bisect_left()", "code": None}


# --- the sandbox -------------------------------------------------------------------------------

def test_sandbox_kills_an_infinite_loop_within_the_timeout():
    started = time.perf_counter()
    verdict = run_check(_task(), "def f(x):\n    while True:\n        pass\n", timeout=2)
    assert verdict == {"passed": False, "reason": "timed out after 2 s"}
    assert time.perf_counter() - started < 5


def test_sandbox_contains_a_memory_bomb():
    bomb = run_check(_task(), "def f(x):\n    return bytearray(8 << 30)\n")
    assert bomb["reason"] == "case 1 of 2 differs" and bomb["failure"]["got"] == "raised MemoryError"
    growing = run_check(_task(), "BLOCKS = []\nwhile True:\n    BLOCKS.append(bytearray(64 << 20))\n")
    assert growing["reason"] == "defining it raised MemoryError"


def test_sandbox_runs_in_a_clean_temporary_folder():
    """The oracle runs in the sandbox too: it says what the checked code must see."""
    oracle = "def f(x):\n    return ('edgespec-task-', False, '0')\n"
    probe = ("import os\ndef f(x):\n    return (os.path.basename(os.getcwd())[:14], 'EDGESPEC_CACHE' in os.environ, "
             "os.environ.get('PYTHONHASHSEED'))\n")
    assert run_check(_task(oracle=oracle), probe)["passed"]


def test_sandbox_output_and_exits_do_not_fake_a_verdict():
    noisy = "print('{\"passed\": true}')\ndef f(x):\n    print('{}')\n    return x\n"
    assert run_check(_task(), noisy)["passed"]
    exits = run_check(_task(), "import os\ndef f(x):\n    os._exit(3)\n")
    assert exits == {"passed": False, "reason": "the process exited with code 3 before its verdict"}
    raises = run_check(_task(), "def f(x):\n    raise SystemExit(0)\n")
    assert raises["failure"] == {"args": "(1,)", "expected": "1", "got": "raised SystemExit"}


def test_sandbox_compares_types_and_in_place_changes():
    assert run_check(_task(), "def f(x):\n    return float(x)\n")["failure"]["got"] == "1.0"
    task = next(t for t in TASKS if t.name == "insort_left")
    returns_copy = "def insort_left(a, x):\n    return sorted(a + [x])\n"
    assert "arguments after the call" in run_check(task, returns_copy)["failure"]["expected"]


def test_a_broken_task_is_an_error_not_a_failed_reply():
    with pytest.raises(RuntimeError, match="task f: the sandbox failed before running the reply"):
        run_check(_task(oracle="def f(x):\n    return (\n"), "def f(x):\n    return x\n")


# --- rows and the command ---------------------------------------------------------------------------

class ScriptedModel:
    """Answers each task with its reference (or wrong) solution between prose, and counts tokens as words."""
    kind, path, recipe, max_len = "scripted", "scripted", {"precision": "fp32"}, 10_000

    def __init__(self, field: str):
        self.field = field
        self.stopped = 0

    def encode(self, messages):
        return messages[0]["content"]  # "tokens": characters

    def reply(self, prompt, max_tokens, done):
        task = next(t for t in TASKS if f"def {t.name}(" in prompt)
        text = ""
        for piece in ["Here it is:\n```python\n", getattr(task, self.field), "```\n", "Explanation ", "follows."]:
            text += piece
            if done(text):
                self.stopped += 1
                break
        return _Reply(text)


class _Reply:
    def __init__(self, text):
        self.text, self.new_tokens, self.prompt_tokens, self.finish = text, len(text.split()), 50, "code block"


def test_row_scores_every_task_and_stops_after_the_code_block():
    tasks = TASKS[:6]
    good, bad = ScriptedModel("reference"), ScriptedModel("wrong")
    row = run_row(good, "good", tasks)
    assert (row["passed"], row["tasks"], row["pass_rate"]) == (6, 6, 1.0)
    assert good.stopped == 6 and all(not r["reply"].endswith("follows.") for r in row["results"])
    assert [r["task"] for r in row["results"]] == [t.name for t in tasks]
    row = run_row(bad, "bad", tasks)
    assert (row["passed"], row["pass_rate"]) == (0, 0.0)


def test_a_prompt_longer_than_the_context_fails_its_task():
    model = ScriptedModel("reference")
    model.max_len = 100
    row = run_row(model, "short", TASKS[:2])
    assert row["passed"] == 0
    for task, r in zip(TASKS[:2], row["results"]):
        n = len(task.prompt())
        assert r["reason"] == f"the prompt of {n} tokens does not fit the 100-token context"
        assert (r["finish"], r["prompt_tokens"], r["new_tokens"]) == ("prompt too long", n, 0)


def test_quality_tasks_on_tiny_bundle(tiny_bundle, tmp_path):
    out = tmp_path / "tasks.json"
    result = CliRunner().invoke(cli, ["quality", "--tasks", str(tiny_bundle), "--max-tokens", "8", "--no-reference",
                                      "--threads", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["max_tokens"] == 8 and report["tasks_file"]["tasks"] == len(TASKS)
    (row,) = report["rows"]
    assert row["kind"] == "bundle" and row["recipe"]["precision"] == "fp32"
    assert [r["task"] for r in row["results"]] == report["tasks"] == [t.name for t in TASKS]
    assert row["pass_rate"] == 0.0  # a random tiny model writes gibberish
    for r in row["results"]:  # the tiny tokenizer makes some prompts longer than the 512-token context
        assert 1 <= r["new_tokens"] <= 8 or (r["finish"] == "prompt too long" and r["new_tokens"] == 0)
        assert r["generate_seconds"] >= 0 and r["prompt_tokens"] > 0
    assert row["new_tokens"] == sum(r["new_tokens"] for r in row["results"])
    assert result.stdout.startswith(f"{tiny_bundle.name} (fp32): 0/{len(TASKS)} tasks pass (0.0%); ")
    assert len(result.stdout.splitlines()) == 1


def test_source_is_the_reference_row(tiny_bundle, tiny_hf, monkeypatch):
    monkeypatch.chdir(tiny_hf.parent)  # the manifest names the source as export was given it
    rows = []
    report = tasks_report([tiny_bundle], max_tokens=4, threads=1, tasks=TASKS[:3], on_row=rows.append)
    assert report["rows"] == rows and [r["kind"] for r in rows] == ["bundle", "torch"]
    source = rows[1]
    assert source["label"] == f"source {tiny_hf.name}" and source["recipe"] == {"precision": "fp32 (torch)"}
    assert [r["task"] for r in source["results"]] == [t.name for t in TASKS[:3]]
    assert format_row(source).startswith(f"source {tiny_hf.name} (fp32 (torch)): 0/3 tasks pass (0.0%); ")


@pytest.mark.parametrize("args, message", [
    (["--tasks"], "--tasks needs at least one BUNDLE"),
    (["a", "b"], "give one BUNDLE (several are for --tasks)"),
    (["a", "--no-reference"], "--no-reference is for --tasks"),
    (["a", "--max-tokens", "9"], "--max-tokens is for --tasks"),
    (["--tasks", "a", "--no-reference", "--reference", "b"], "--no-reference and --reference exclude each other"),
    (["--tasks", "a", "--compare", "src"], "--tasks runs bundles that exist"),
])
def test_quality_tasks_usage_errors(args, message):
    result = CliRunner().invoke(cli, ["quality", *args])
    assert result.exit_code == 2 and message in result.output


def test_quality_tasks_refuses_a_missing_bundle(tmp_path):
    result = CliRunner().invoke(cli, ["quality", "--tasks", str(tmp_path / "nope")])
    assert result.exit_code != 0 and f"bundle '{tmp_path / 'nope'}' not found: no such folder" in result.output
