"""The CLI's errors: bad options refused by name before any work, the project's errors as one
line, a bug's traceback kept, and output that cannot be written (full disk, closed pipe)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from edgespec.apps.cli import cli

# `edgespec` as the console script runs it: main() owns the process and its stdout.
MAIN = [sys.executable, "-c", "from edgespec.apps.cli import main; main()"]
CORES = os.cpu_count()
MISSING = "/nonexistent/bundle"  # never loaded: the options are refused first


def _refused(args: list[str]) -> tuple[int, str]:
    r = CliRunner().invoke(cli, args, input="")
    return r.exit_code, r.output.strip().splitlines()[-1] if r.output.strip() else ""


@pytest.mark.parametrize("args, message", [
    (["run", "hi", "--seed", "-1"], "Invalid value for '--seed': -1 is not in the range x>=0."),
    (["chat", "--seed", "-1"], "Invalid value for '--seed': -1 is not in the range x>=0."),
    (["run", ""], "Invalid value for 'PROMPT': prompt is empty; give some text"),
    (["run", "hi", "--stop", ""], "Invalid value for '--stop': stop string is empty; give some text"),
    (["run", "hi", "--max-tokens", "0"], "Invalid value for '--max-tokens': 0 is not in the range x>=1."),
    (["run", "hi", "--budget", "-5"], "Invalid value for '--budget': -5 is not in the range x>=1."),
    (["serve", "--budget", "-5"], "Invalid value for '--budget': -5 is not in the range x>=1."),
    (["run", "hi", "--threads", "1000"], f"Invalid value for '--threads': 1000 is more than the {CORES} "
                                         f"logical cores of this machine; give at most {CORES}"),
    (["chat", "--threads", "0"], "Invalid value for '--threads': 0 is not a thread count; give at least 1"),
    (["serve", "--threads", "-2"], "Invalid value for '--threads': -2 is not a thread count; give at least 1"),
    (["bench", "--threads", "1000"], f"Invalid value for '--threads': 1000 is more than the {CORES} "
                                     f"logical cores of this machine; give at most {CORES}"),
    (["devices", "--threads", "1000"], f"Invalid value for '--threads': 1000 is more than the {CORES} "
                                       f"logical cores of this machine; give at most {CORES}"),
    (["quality", MISSING, "--threads", "0"], "Invalid value for '--threads': 0 is not a thread count; "
                                             "give at least 1"),
    (["export", MISSING, "-o", "OUT", "--max-context", "0"],
     "Invalid value for '--max-context': 0 is not in the range x>=1."),
    (["export", MISSING, "-o", "OUT", "--max-context", "-5"],
     "Invalid value for '--max-context': -5 is not in the range x>=1."),
    (["export", MISSING, "-o", "OUT", "--block-size", "0"],
     "Invalid value for '--block-size': '0' is not one of '16', '32', '64', '128', '256'."),
])
def test_bad_options_are_refused_by_name_before_any_work(args, message, tmp_path):
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    if args[0] in ("run", "chat", "serve", "bench"):
        args += ["--target", MISSING, "--draft", "none"]
    code, last = _refused(args)
    assert (code, last) == (2, f"Error: {message}")


def test_a_bug_keeps_its_traceback_and_a_user_error_is_one_line(tiny_bundle):
    """A ValueError from the code is a bug, shown with its traceback; EdgespecError is one line."""
    def run_with_load_raising(error: str):
        patch = (f"import edgespec.runtime.api as api\n"
                 f"from edgespec.contract.errors import EdgespecError\n"
                 f"def load(*a, **k): raise {error}\n"
                 f"api.load = load\n"
                 f"from edgespec.apps.cli import main; main()\n")
        return subprocess.run([sys.executable, "-c", patch, "run", "hi", "--target", str(tiny_bundle), "--draft", "none"],
                              capture_output=True, text=True, timeout=120)
    bug = run_with_load_raising("ValueError('operands could not be broadcast')")
    assert bug.returncode == 1
    assert "Traceback (most recent call last)" in bug.stderr
    assert bug.stderr.strip().splitlines()[-1] == "ValueError: operands could not be broadcast"
    mine = run_with_load_raising("EdgespecError('bundle x is unusable; export it again')")
    assert (mine.returncode, mine.stderr) == (1, "Error: bundle x is unusable; export it again\n")


# A command that leaves its output in the buffer: the interpreter's exit would flush it.
UNFLUSHED = ("import sys\nfrom edgespec.apps.cli import cli, main\n"
             "cli.command('say')(lambda: sys.stdout.write('unflushed'))\nmain()\n")


@pytest.fixture(params=["run", "unflushed"])
def command(request, tiny_bundle) -> list[str]:
    if request.param == "run":
        return [*MAIN, "run", "def add(a, b):", "--target", str(tiny_bundle), "--draft", "none", "--max-tokens", "2"]
    return [sys.executable, "-c", UNFLUSHED, "say"]


def test_output_to_a_full_disk_is_one_line(command):
    with open("/dev/full", "w") as full:
        r = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr
    assert r.stderr.strip().splitlines()[-1] == "Error: cannot write output: No space left on device"


def test_output_to_a_closed_pipe_ends_quietly(command):
    """`edgespec run ... | head -c1` once the reader is gone: no message, like other Unix tools."""
    read, write = os.pipe()
    os.close(read)
    try:
        r = subprocess.run(command, stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr and "Error" not in r.stderr


def test_piped_chat_refuses_text_that_is_not_utf8_and_goes_on(tiny_bundle):
    r = CliRunner().invoke(cli, ["chat", "--target", str(tiny_bundle), "--draft", "none", "--max-tokens", "4"],
                           input=b"caf\xe9\n/stats\n/exit\n")
    assert r.exit_code == 0, r.output
    assert "not valid Unicode" in r.output and "no answer yet" in r.output and "bye" in r.output


def test_a_bundle_without_chat_template_suggests_raw(tiny_bundle, monkeypatch):
    import edgespec.runtime.api as api
    real_load = api.load

    def load_without_template(*args, **kwargs):
        gen = real_load(*args, **kwargs)
        gen.tokenizer.chat_template = None
        return gen
    monkeypatch.setattr(api, "load", load_without_template)
    args = ["run", "def add(a, b):", "--target", str(tiny_bundle), "--draft", "none", "--max-tokens", "2"]
    r = CliRunner().invoke(cli, args)
    assert (r.exit_code, r.output) == (1, f"Error: {tiny_bundle.name} has no chat template: pass the prompt "
                                          f"as plain text (CLI: --raw)\n")
    assert CliRunner().invoke(cli, [*args, "--raw"]).exit_code == 0


def test_serve_on_a_taken_port_fails_before_loading():
    import socket
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, last = _refused(["serve", "--port", str(port), "--target", MISSING, "--draft", "none"])
    assert (code, last) == (1, f"Error: cannot listen on 127.0.0.1 port {port}: Address already in use; "
                               f"choose another --host or --port")
