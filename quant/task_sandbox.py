"""Checks one model-written function in a child process; never imported by edgespec.

quant/tasks.py starts this file as a script in a fresh interpreter, with a temporary
folder as cwd, a clean environment and its own process group, and sends one JSON job on
stdin: {name, code, oracle, cases, seed, mutates, cpu_seconds, memory_bytes}. Limits are
set before any job code runs; the oracle's outcomes are computed before the model's code
is executed (so it cannot change them); the model's output goes to /dev/null; the verdict
is one JSON object on the original stdout.
"""

import copy
import json
import os
import random
import resource
import sys

FILE_BYTES = 1 << 20  # the largest file the checked code may write
REPR_CHARS = 200      # of the failing case's arguments and results in the verdict


def set_limits(cpu_seconds: int, memory_bytes: int) -> None:
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))  # then SIGXCPU, SIGKILL
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))     # MemoryError beyond it
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_BYTES, FILE_BYTES))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def outcome(fn, args: tuple, mutates: bool) -> tuple:
    """What calling fn(*args) does: its value (and the arguments after, for in-place tasks)
    or the name of what it raised."""
    args = copy.deepcopy(args)
    try:
        value = fn(*args)
    except BaseException as e:  # the checked code may raise anything, SystemExit included
        return ("raised", type(e).__name__)
    return ("returned", value, args if mutates else None)


def same(a, b) -> bool:
    """Equal values of the same types, all the way down (1 != 1.0 != True; list != tuple)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def short(value) -> str:
    try:
        text = repr(value)
    except BaseException as e:
        text = f"<unprintable {type(value).__name__}: {type(e).__name__}>"
    return text if len(text) <= REPR_CHARS else text[:REPR_CHARS] + "..."


def describe(o: tuple) -> str:
    if o[0] == "raised":
        return f"raised {o[1]}"
    return short(o[1]) + ("" if o[2] is None else f"; arguments after the call: {short(o[2])}")


def expectations(job: dict) -> tuple[list, list]:
    """The task's cases and the oracle's outcome on each."""
    oracle, cases_ns = {"__name__": "oracle"}, {"__name__": "cases"}
    exec(job["oracle"], oracle)
    exec(job["cases"], cases_ns)
    cases = cases_ns["cases"](random.Random(job["seed"]))
    return cases, [outcome(oracle[job["name"]], args, job["mutates"]) for args in cases]


def judge(job: dict, cases: list, expected: list) -> dict:
    """Run the model's code and compare it with the oracle, case by case; stop at the first difference."""
    name = job["name"]
    verdict = {"cases": len(cases), "cases_passed": 0}
    candidate = {"__name__": "candidate"}
    try:
        exec(compile(job["code"], "<reply>", "exec"), candidate)
    except BaseException as e:
        what = type(e).__name__ + (f": {short(str(e))}" if str(e) else "")
        return {**verdict, "passed": False, "reason": f"defining it raised {what}"}
    fn = candidate.get(name)
    if not callable(fn):
        return {**verdict, "passed": False, "reason": f"the code defines no function {name}()"}
    for i, (args, want) in enumerate(zip(cases, expected)):
        got = outcome(fn, args, job["mutates"])
        if not same(got, want):
            return {**verdict, "cases_passed": i, "passed": False,
                    "reason": f"case {i + 1} of {len(cases)} differs",
                    "failure": {"args": short(args), "expected": describe(want), "got": describe(got)}}
    return {**verdict, "cases_passed": len(cases), "passed": True, "reason": "all cases pass"}


def main() -> None:
    del sys.path[0]  # this file's folder: the checked code imports only what any script could
    job = json.loads(sys.stdin.buffer.read())
    set_limits(job["cpu_seconds"], job["memory_bytes"])
    cases, expected = expectations(job)  # a broken task fails here, its traceback on stderr
    verdict_out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)
    os.dup2(quiet, 2)
    sys.stdout = sys.stderr = open(os.devnull, "w")
    verdict = judge(job, cases, expected)
    verdict_out.write(json.dumps(verdict))
    verdict_out.flush()
    os._exit(0)  # skip exit handlers the checked code may have registered


if __name__ == "__main__":
    main()
