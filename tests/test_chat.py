"""`edgespec chat`: driven through a real pseudo-terminal as a person would, plus its session logic."""

from __future__ import annotations

import io
import json
import os
import re
import time

import pytest
from click.testing import CliRunner

from test_serve import CLI, build_slow_bundle

pexpect = pytest.importorskip("pexpect")

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1b[>=]|\r")


@pytest.fixture(scope="session")
def slow_bundle(tmp_path_factory):
    return build_slow_bundle(tmp_path_factory.getbasetemp() / "slow-bundle")


def spawn(*args: str):
    env = dict(os.environ, PROMPT_TOOLKIT_NO_CPR="1", TERM="xterm-256color", EDGESPEC_DEBUG="1")
    child = pexpect.spawn(CLI[0], [*CLI[1:], "chat", *args], env=env, encoding="utf-8",
                          timeout=60, dimensions=(50, 200))
    child.expect_exact("/help for commands")
    child.expect_exact("you>")
    return child


def screen(text: str) -> str:
    return ANSI.sub("", text)


def test_chat_in_a_terminal(tiny_bundle, tiny_draft_bundle, tmp_path):
    """Question, streamed answer, /stats, next turn reusing the cache, /save, /reset, /load, Ctrl-D."""
    from edgespec.runtime.api import Generator
    from edgespec.runtime.session import Session
    child = spawn("--target", str(tiny_bundle), "--draft", str(tiny_draft_bundle), "--max-tokens", "30",
                  "--system", "You write Python.")
    child.sendline("def add(a, b):")
    child.expect(r"\d+ tokens, [\d.]+ tok/s")  # the answer's closing line
    answer_on_screen = screen(child.before)
    child.expect_exact("you>")
    child.sendline("/stats")
    child.expect(r"acceptance \d+%")
    child.expect_exact("you>")
    child.sendline("and subtract?")
    child.expect(r"tok/s")
    child.expect_exact("you>")
    child.sendline("/stats")
    child.expect(r"(\d+) reused from the cache")
    assert int(child.match.group(1)) > 20  # the second turn prefilled only what was new
    child.expect_exact("you>")
    saved = tmp_path / "conversation.json"
    child.sendline(f"/save {saved}")
    child.expect_exact("saved 4 messages")
    child.expect_exact("you>")
    child.sendline("/reset")
    child.expect_exact("conversation cleared")
    child.expect_exact("you>")
    child.sendline("/stats")
    child.expect_exact("conversation: 0 messages")
    child.expect_exact("you>")
    child.sendline(f"/load {saved}")
    child.expect_exact("loaded 4 messages from")
    child.expect_exact("you>")
    child.sendline("/stats")
    child.expect_exact("conversation: 4 messages")
    child.expect_exact("you>")
    child.sendcontrol("d")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0

    data = json.loads(saved.read_text())
    assert data["system"] == "You write Python." and [m["role"] for m in data["messages"]] == \
        ["user", "assistant", "user", "assistant"]
    # greedy answers equal Generator.generate on the same messages
    gen = Generator(Session(tiny_bundle), Session(tiny_draft_bundle))
    system = [{"role": "system", "content": data["system"]}]
    first = gen.generate(system + data["messages"][:1], max_tokens=30).text
    second = gen.generate(system + data["messages"][:3], max_tokens=30).text
    assert data["messages"][1]["content"] == first and data["messages"][3]["content"] == second
    line = next(s for s in first.splitlines() if s.strip())
    assert line in answer_on_screen  # it was streamed to the terminal


def test_ctrl_c_stops_the_answer_and_the_session_survives(slow_bundle, tmp_path):
    child = spawn("--target", str(slow_bundle), "--draft", "none", "--max-tokens", "4000")
    child.sendline("write a long story")
    time.sleep(1.5)  # the answer is streaming (it would run for many seconds)
    child.sendintr()
    child.expect_exact("interrupted; the partial answer stays in the conversation")
    child.expect_exact("you>")
    child.sendline("/stats")
    child.expect(r"answer: +(\d+) tokens \(interrupted\)")
    assert 0 < int(child.match.group(1)) < 4000
    child.expect_exact("you>")
    saved = tmp_path / "partial.json"
    child.sendline(f"/save {saved}")
    child.expect_exact("saved 2 messages")
    child.expect_exact("you>")
    child.sendline("again")  # the model still answers
    time.sleep(1.0)
    child.sendintr()
    child.expect_exact("interrupted")
    child.expect_exact("you>")
    child.sendintr()  # Ctrl-C at an empty prompt, twice, leaves
    child.expect_exact("Ctrl-C again")
    child.expect_exact("you>")  # the prompt reads keys again (a ^C before it is the terminal's)
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    partial = json.loads(saved.read_text())["messages"][1]
    assert partial["role"] == "assistant" and len(partial["content"]) > 0


def test_piped_chat_and_exit(tiny_bundle):
    """Without a terminal: lines from stdin, plain text out, a trailing \\ continues a line."""
    from edgespec.apps.cli import cli
    result = CliRunner().invoke(cli, ["chat", "--target", str(tiny_bundle), "--draft", "none",
                                      "--max-tokens", "8"],
                                input="/system be brief\nfirst \\\nline\n/bogus\n/stats\n/exit\nnever read\n")
    assert result.exit_code == 0, result.output
    assert "system prompt set" in result.output and "unknown command /bogus" in result.output
    assert "answer:   8 tokens (length)" in result.output and "\x1b[" not in result.output
    assert "bye" in result.output


def _small_chat(bundle, context: int, **kwargs):
    from edgespec.apps.chat import Chat
    from edgespec.runtime.api import Generator
    from edgespec.runtime.session import Session, SessionOptions
    gen = Generator(Session(bundle, SessionOptions(max_context=context)), reuse_cache=True)
    return Chat(gen, **kwargs)


def test_context_full_drops_oldest_turns_keeps_system(tiny_bundle):
    from edgespec.apps.chat import ContextFull
    chat = _small_chat(tiny_bundle, 160, system="You write Python.", max_tokens=24)
    dropped = 0
    for i in range(8):
        reply = chat.reply(f"question {i}: what does wrap do?")
        text = "".join(reply)
        dropped += reply.dropped
        assert chat.messages[-1] == {"role": "assistant", "content": text}
        assert reply.stats.prompt_tokens + 24 <= 160  # room kept for the answer
    assert dropped > 0 and chat.system == "You write Python."
    assert chat.messages[0]["role"] == "user" and chat.messages[-2]["content"] == "question 7: what does wrap do?"
    assert chat.last.stats.cached_prompt_tokens > 0
    before = list(chat.messages)
    with pytest.raises(ContextFull, match="160-token context"):
        chat.reply("x" * 2000)
    assert chat.messages == before  # nothing half-added


def test_closed_reply_keeps_partial_text(tiny_bundle):
    chat = _small_chat(tiny_bundle, 512, max_tokens=200)
    reply = chat.reply("hello")
    pieces = iter(reply)
    partial = next(pieces) + next(pieces)
    reply.close()
    assert reply.finish_reason == "interrupted"
    assert chat.messages == [{"role": "user", "content": "hello"}, {"role": "assistant", "content": partial}]
    full = "".join(chat.reply("hello again"))  # the cache is consistent after the early close
    from edgespec.runtime.api import Generator
    fresh = Generator(chat.gen.target).generate(chat.conversation()[:3], max_tokens=200).text
    assert full == fresh


def test_load_accepts_plain_message_lists(tiny_bundle, tmp_path):
    from edgespec.contract.errors import EdgespecError
    chat = _small_chat(tiny_bundle, 512)
    path = tmp_path / "msgs.json"
    path.write_text(json.dumps([{"role": "system", "content": "S"}, {"role": "user", "content": "hi"},
                                {"role": "assistant", "content": "yo"}]))
    chat.load(path)
    assert chat.system == "S" and len(chat.messages) == 2
    path.write_text(json.dumps([{"role": "tool", "content": "x"}]))
    with pytest.raises(EdgespecError, match="message 0"):
        chat.load(path)
    with pytest.raises(FileExistsError, match="/save!"):
        chat.save(path)


def test_renderer_colours_code_blocks_only_on_a_terminal():
    from edgespec.apps.chat_cmd import Renderer
    text = "Here:\n```python\ndef f(x):\n    return x\n```\nDone `x`.\n``not a fence\nend"
    for color in (True, False):
        out = io.StringIO()
        r = Renderer(out, color)
        for i in range(0, len(text), 3):
            r.feed(text[i:i + 3])
        r.finish()
        assert ANSI.sub("", out.getvalue()) == text + "\n"
        assert ("\x1b[" in out.getvalue()) == color
