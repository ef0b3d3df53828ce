"""Task-level quality: does the model still write working code? (`edgespec quality --tasks`)

Perplexity and top-1 agreement (quality.py) say how far a bundle's logits moved; this says
what that costs a user. Each task in tasks.json asks, in one chat message, for a single
Python function (mostly a standard-library behaviour re-implemented). The reply is
generated greedily, its code extracted, and the function compared with the real one on a
few hundred generated inputs in a child process (task_sandbox.py) with a wall-clock
timeout, CPU, memory and file-size limits and a temporary folder as cwd: model-written
code never runs in this process. No code, code that raises, a forbidden import, a
timeout: the task fails.

Rows: each bundle through the Generator API, and the source model in torch (the bundle's
source, resolved as quality.py resolves its reference: a GGUF dequantized by transformers)
as the reference row.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..contract.errors import EdgespecError, InputError
from ..contract.files import atomic_write_text
from ..contract.manifest import MANIFEST_NAME, Manifest, read_manifest

TASKS_FILE = Path(__file__).with_name("tasks.json")
SANDBOX = Path(__file__).with_name("task_sandbox.py")
DEFAULT_MAX_TOKENS = 384  # q05's passing replies took 93-308 tokens; a reply stops after its code block
TIMEOUT_S = 10.0          # wall clock for one task's cases (a correct function needs well under 1 s)
MEMORY_BYTES = 1 << 30    # address space of the child: a memory bomb raises MemoryError there

# Top-level statements kept from a reply: definitions and constants, not demos or tests.
_KEEP = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign,
         ast.AnnAssign)
_FENCE = re.compile(r"^[ \t]*```[^\n`]*\n(?P<code>.*?)(?:(?P<close>^[ \t]*```)|\Z)", re.M | re.S)
_CODE_START = re.compile(r"^(?:def |async def |class |import |from \w[\w.]* import |@)")


@dataclass(frozen=True)
class Task:
    name: str
    signature: str
    description: str
    forbid: tuple[str, ...]  # module names, and ".attr" names the reply may not use
    mutates: bool            # the function works in place: compare the arguments after the call too
    oracle: str              # defines `name`: the behaviour to match (often the stdlib function itself)
    cases: str               # defines cases(rng) -> list of argument tuples
    reference: str           # a solution that passes (tests/test_tasks.py)
    wrong: str               # a plausible mistake that fails (tests/test_tasks.py)

    @classmethod
    def from_dict(cls, d: dict) -> "Task":
        code = {k: "\n".join(d[k]) + "\n" for k in ("oracle", "cases", "reference", "wrong")}
        return cls(name=d["name"], signature=d["signature"], description=d["description"],
                   forbid=tuple(d["forbid"]), mutates=bool(d["mutates"]), **code)

    def prompt(self) -> str:
        modules = [f for f in self.forbid if not f.startswith(".")]
        attrs = [f for f in self.forbid if f.startswith(".")]
        rules = []
        if modules:
            rules.append("Do not import " + ", ".join(f"`{m}`" for m in modules) + ".")
        if attrs:
            rules.append("Do not use " + ", ".join(f"`{a}`" for a in attrs) + ".")
        return "\n\n".join([f"Write a Python function with this signature:\n\n    {self.signature}",
                            self.description, *rules,
                            "Reply with the complete function in one ```python code block, "
                            "without docstring, tests or example usage."])


def load_tasks(path: str | Path = TASKS_FILE) -> list[Task]:
    return [Task.from_dict(d) for d in json.loads(Path(path).read_text(encoding="utf-8"))["tasks"]]


# --- the reply's code --------------------------------------------------------------------------

def _defines(name: str) -> re.Pattern:
    return re.compile(rf"^[ \t]*(?:async[ \t]+)?def[ \t]+{re.escape(name)}[ \t]*\(", re.M)


def code_blocks(reply: str) -> list[tuple[str, bool]]:
    """Fenced blocks in order, as (code, closed); a last block cut off by max_tokens is not closed."""
    return [(m["code"], m["close"] is not None) for m in _FENCE.finditer(reply)]


def complete_block(reply: str, name: str) -> bool:
    """The reply holds a closed code block defining `name`: what follows is prose, stop generating
    (extract_code would pick the same block from the whole reply)."""
    defines = _defines(name)
    return any(closed and defines.search(code) for code, closed in code_blocks(reply))


def extract_code(reply: str, name: str) -> str | None:
    """The first fenced block that defines `name` (or, without fences, the code in the reply),
    reduced to its top-level definitions; None when there is none."""
    defines = _defines(name)
    blocks = code_blocks(reply)
    if blocks:
        code = next((c for c, _ in blocks if defines.search(c)), None)
    else:
        code = _bare_code(reply, defines)
    return None if code is None else definitions(code)


def _bare_code(reply: str, defines: re.Pattern) -> str | None:
    """The longest run of lines, from a line that starts code, that parses and defines the function."""
    lines = reply.splitlines()
    for start, line in enumerate(lines):
        if not _CODE_START.match(line):
            continue
        for end in range(len(lines), start, -1):
            code = "\n".join(lines[start:end])
            if defines.search(code) and _parse(code) is not None:
                return code + "\n"
    return None


def _parse(code: str) -> ast.Module | None:
    try:
        return ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # ValueError: NUL bytes
        return None


def definitions(code: str) -> str:
    """Imports, definitions and assignments of `code`, without demos (prints, asserts,
    `if __name__ == ...`); unparsable code as it is, for the sandbox to report its error."""
    tree = _parse(code)
    if tree is None:
        return code
    return "\n\n".join(ast.unparse(node) for node in tree.body if isinstance(node, _KEEP)) + "\n"


def forbidden_use(code: str, forbid: tuple[str, ...]) -> str | None:
    """What in `code` the task forbids (an import of a listed module, a listed attribute), or None."""
    tree = _parse(code)
    if tree is None:
        return None
    modules = {f for f in forbid if not f.startswith(".")}
    attrs = {f[1:] for f in forbid if f.startswith(".")}
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "id", getattr(node.func, "attr", None)) in ("__import__", "import_module")):
            names = [node.args[0].value]
        elif isinstance(node, ast.Attribute) and node.attr in attrs:
            return f"uses .{node.attr}, which the task forbids"
        for n in names:
            if n.split(".")[0] in modules:
                return f"imports {n}, which the task forbids"
    return None


# --- checking in a child process ---------------------------------------------------------------

def run_check(task: Task, code: str, timeout: float = TIMEOUT_S, memory_bytes: int = MEMORY_BYTES) -> dict:
    """Compare `code`'s function with the task's oracle in the sandbox; a verdict dict with
    passed, reason, cases, cases_passed (and failure: args, expected, got)."""
    job = {"name": task.name, "code": code, "oracle": task.oracle, "cases": task.cases, "seed": task.name,
           "mutates": task.mutates, "cpu_seconds": math.ceil(timeout) + 1,  # the wall clock fires first
           "memory_bytes": memory_bytes}
    # A clean environment: fixed hash seed (set order is part of some replies' output), nothing of ours.
    env = {"PATH": os.defpath, "PYTHONHASHSEED": "0"}
    with tempfile.TemporaryDirectory(prefix="edgespec-task-") as cwd:
        proc = subprocess.Popen([sys.executable, "-s", "-B", str(SANDBOX)], cwd=cwd, env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        try:
            out, err = proc.communicate(json.dumps(job).encode(), timeout=timeout)
        except subprocess.TimeoutExpired:
            # the whole group: children the code started go too (the rlimits they inherit bound the rest)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return {"passed": False, "reason": f"timed out after {timeout:g} s"}
    if proc.returncode == 0 and out:
        return json.loads(out)
    if err:  # before the reply's code ran: the task itself is broken
        raise RuntimeError(f"task {task.name}: the sandbox failed before running the reply:\n"
                           f"{err.decode(errors='replace')}")
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        why = "CPU time limit" if name == "SIGXCPU" else name
        return {"passed": False, "reason": f"killed ({why})"}
    return {"passed": False, "reason": f"the process exited with code {proc.returncode} before its verdict"}


def score(task: Task, reply: str, timeout: float = TIMEOUT_S) -> dict:
    """A reply's verdict, with the code that was checked."""
    code = extract_code(reply, task.name)
    if code is None:
        return {"passed": False, "reason": f"no code defining {task.name}()", "code": None}
    forbidden = forbidden_use(code, task.forbid)
    if forbidden:
        return {"passed": False, "reason": forbidden, "code": code}
    return {**run_check(task, code, timeout), "code": code}


# --- the models that answer --------------------------------------------------------------------

@dataclass
class Reply:
    text: str
    new_tokens: int
    prompt_tokens: int
    finish: str  # "code block" (stopped after it), "stop" (end of turn), "length", "prompt too long"


class BundleChat:
    """A bundle through the Generator API, target alone (greedy output is the target's anyway)."""
    kind = "bundle"

    def __init__(self, folder: Path, threads: int | None = None):
        from ..runtime.api import load
        self.path = Path(folder)
        self.manifest = read_manifest(self.path)
        self.generator = load(self.path, threads=threads)  # drafter none: lookup gained nothing here
        self.recipe = self.manifest.quant
        self.max_len = self.generator.target.max_len

    def encode(self, messages: list[dict]) -> list[int]:
        return self.generator.encode(messages)

    def reply(self, ids: list[int], max_tokens: int, done: Callable[[str], bool]) -> Reply:
        from ..runtime.api import Stats
        stats, text, finish = Stats(), "", None
        stream = self.generator.stream(ids, max_tokens=max_tokens, temperature=0.0, stats=stats)
        try:
            for chunk in stream:
                text += chunk.text
                if done(text):
                    finish = "code block"
                    break
        finally:
            stream.close()
        return Reply(text, stats.new_tokens, stats.prompt_tokens, finish or stats.finish_reason)


class TorchChat:
    """The source model in transformers (quality.py's reference), greedy with its KV cache;
    prompts rendered and replies decoded by the bundle's tokenizer (the same one)."""
    kind = "torch"

    def __init__(self, reference, bundle: Path, manifest: Manifest):
        from ..runtime.tokenizer import BundleTokenizer
        self.path = reference.path
        self.model = reference.model
        self.tokenizer = BundleTokenizer(bundle)
        self.eos = set(manifest.eos_token_ids)
        self.recipe = reference.describe()["recipe"]
        self.max_len = reference.max_len
        # transformers 5 renamed forward's past_key_values to cache (the old name warns)
        params = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    def encode(self, messages: list[dict]) -> list[int]:
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)

    def reply(self, ids: list[int], max_tokens: int, done: Callable[[str], bool]) -> Reply:
        import torch
        from transformers.cache_utils import DynamicCache
        new, finish = [], "length"
        max_tokens = min(max_tokens, self.max_len - len(ids))  # positions the model has
        cache = {self._cache_arg: DynamicCache()}  # filled in place by each forward
        x = torch.tensor([ids])  # [1, S]
        with torch.no_grad():
            for _ in range(max_tokens):
                logits = self.model(input_ids=x, use_cache=True, **cache).logits  # [1, S, vocab]
                token = int(logits[0, -1].argmax())
                if token in self.eos:
                    finish = "stop"
                    break
                new.append(token)
                if done(self.tokenizer.decode(new)):
                    finish = "code block"
                    break
                x = torch.tensor([[token]])  # [1, 1]
        return Reply(self.tokenizer.decode(new), len(new), len(ids), finish)


# --- rows and the report -----------------------------------------------------------------------

def run_row(model, label: str, tasks: list[Task], max_tokens: int = DEFAULT_MAX_TOKENS) -> dict:
    """Every task through one model: per-task verdicts, the pass rate, tokens and time."""
    from tqdm import tqdm
    results = []
    for task in tqdm(tasks, desc=f"tasks {label}", unit="task", file=sys.stderr, disable=None, leave=False):
        t0 = time.perf_counter()
        ids = model.encode([{"role": "user", "content": task.prompt()}])
        fits = len(ids) < model.max_len  # a model that cannot take the question fails the task
        reply = (model.reply(ids, max_tokens, lambda text: complete_block(text, task.name)) if fits
                 else Reply("", 0, len(ids), "prompt too long"))
        t1 = time.perf_counter()
        verdict = score(task, reply.text) if fits else {
            "passed": False, "reason": f"the prompt of {len(ids)} tokens does not fit the {model.max_len}-token "
                                       "context", "code": None}
        results.append({"task": task.name, **verdict, "new_tokens": reply.new_tokens,
                        "prompt_tokens": reply.prompt_tokens, "finish": reply.finish,
                        "generate_seconds": round(t1 - t0, 3),
                        "check_seconds": round(time.perf_counter() - t1, 3), "reply": reply.text})
    passed = sum(r["passed"] for r in results)
    new_tokens = sum(r["new_tokens"] for r in results)
    generate = sum(r["generate_seconds"] for r in results)
    return {"label": label, "kind": model.kind, "path": str(model.path), "recipe": model.recipe,
            "tasks": len(results), "passed": passed, "pass_rate": passed / len(results),
            "new_tokens": new_tokens, "prompt_tokens": sum(r["prompt_tokens"] for r in results),
            "generate_seconds": round(generate, 2), "tok_s": round(new_tokens / generate, 2) if generate else 0.0,
            "check_seconds": round(sum(r["check_seconds"] for r in results), 2), "results": results}


def tasks_report(bundles: list[str | Path], reference=None, with_reference: bool = True,
                 max_tokens: int = DEFAULT_MAX_TOKENS, threads: int | None = None,
                 json_path: str | Path | None = None, on_row: Callable[[dict], None] | None = None,
                 tasks: list[Task] | None = None) -> dict:
    """Run the tasks (default: all of tasks.json) on each bundle, then on the reference:
    `reference` (a bundle or a Hugging Face folder) or, by default, each bundle's source where it
    can be opened. The JSON report is rewritten after every row, so an interrupted run keeps the
    rows it finished."""
    bundles = [Path(b) for b in bundles]
    manifests = [read_manifest(b) for b in bundles]  # every BUNDLE checked before any work
    tasks = load_tasks() if tasks is None else tasks
    if not tasks:
        raise InputError("no tasks to run; give at least one")
    started = time.time()
    report = {"tasks_file": {"path": str(TASKS_FILE), "tasks": len(tasks),
                             "sha256": hashlib.sha256(TASKS_FILE.read_bytes()).hexdigest()},
              "tasks": [t.name for t in tasks],
              "python": platform.python_version(),  # the oracles are this Python's standard library
              "max_tokens": max_tokens, "greedy": True, "rows": [], "seconds": 0.0}

    def add(row: dict) -> None:
        report["rows"].append(row)
        report["seconds"] = round(time.time() - started, 1)
        if json_path:
            atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")
        if on_row:
            on_row(row)

    for bundle in bundles:
        model = BundleChat(bundle, threads)
        add(run_row(model, bundle.name, tasks, max_tokens))
        del model  # its sessions' memory, before the next model loads
    for label, model in _references(bundles, manifests, reference, with_reference, threads):
        add(run_row(model, label, tasks, max_tokens))
    return report


def _references(bundles: list[Path], manifests: list[Manifest], reference, with_reference: bool,
                threads: int | None):
    """(label, model) of each reference row, opened one at a time."""
    from .quality import open_reference
    if not with_reference:
        return
    if reference is not None:
        folder = Path(reference)
        if (folder / MANIFEST_NAME).is_file():
            yield f"reference {folder.name}", BundleChat(folder, threads)
        else:
            ref = open_reference(folder, manifests[0], bundles[0], threads)
            yield f"reference {folder.name}", TorchChat(ref, bundles[0], manifests[0])
        return
    seen = set()
    for bundle, manifest in zip(bundles, manifests):
        source = manifest.source or {}
        key = source.get("sha256") or source.get("name")
        if key in seen:
            continue
        seen.add(key)
        try:
            ref = open_reference(None, manifest, bundle, threads)
        except EdgespecError as e:
            print(f"edgespec: no source row for {bundle.name}: {e}", file=sys.stderr, flush=True)
            continue
        yield f"source {source.get('name')}", TorchChat(ref, bundle, manifest)


def format_row(row: dict) -> str:
    """One line: label, recipe, pass rate, tokens and time."""
    from .quality import _recipe_label
    return (f"{row['label']} ({_recipe_label(row['recipe'])}): {row['passed']}/{row['tasks']} tasks pass "
            f"({row['pass_rate']:.1%}); {row['new_tokens']:,} tokens in {row['generate_seconds']:.1f} s "
            f"({row['tok_s']:.1f} tok/s), checks {row['check_seconds']:.1f} s")
