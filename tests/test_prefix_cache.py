"""Prefix reuse beyond the previous call: the in-memory LRU (runtime/prefix_cache.py) and the
on-disk prompt cache (runtime/prompt_store.py) give exactly the tokens of a cold run."""

from __future__ import annotations

import inspect
import json
import json.decoder
import json.encoder
import re
import textwrap
import warnings

import pytest

from edgespec.runtime.api import Generator, Stats
from edgespec.runtime.prefix_cache import PrefixCache
from edgespec.runtime.prompt_store import MAGIC, PromptCacheWarning, PromptStore
from edgespec.runtime.session import Session

NEW = 12  # tokens generated per call


@pytest.fixture(scope="module")
def text_ids(tiny_bundle) -> list[int]:
    """Token ids of real code (the tiny model writes sensible continuations of it)."""
    text = "".join(textwrap.dedent(inspect.getsource(m)) for m in (textwrap, json.decoder, json.encoder))
    ids = Generator(Session(tiny_bundle)).encode(text)
    assert len(ids) > 6200
    return ids


@pytest.fixture(scope="module")
def cold(tiny_bundle):
    """Fresh greedy output of a prompt, from a generator that keeps nothing between calls."""
    gen = Generator(Session(tiny_bundle))
    return lambda ids: gen.generate(ids, max_tokens=NEW).token_ids


def lru_generator(bundle, max_bytes=1 << 30, draft=None, reuse_cache=False) -> Generator:
    return Generator(Session(bundle), draft and Session(draft), reuse_cache=reuse_cache,
                     prefix_cache=PrefixCache(max_bytes))


# --- memory ---------------------------------------------------------------------------------

def test_lru_reuses_the_longest_shared_prefix_and_gives_cold_tokens(tiny_bundle, text_ids, cold):
    gen = lru_generator(tiny_bundle)
    a, b, c = text_ids[:300], text_ids[1000:1250], text_ids[:200] + text_ids[2000:2040]
    assert gen.generate(a, max_tokens=NEW).stats.cached_prompt_tokens == 0
    assert gen.generate(b, max_tokens=NEW).stats.cached_prompt_tokens == 0
    r = gen.generate(c, max_tokens=NEW)  # a tool resending a's start with another tail
    assert (r.stats.cached_prompt_tokens, r.stats.cached_from) == (200, "memory")
    assert r.token_ids == cold(c)
    again = gen.generate(a, max_tokens=NEW)  # the whole prompt but its last token
    assert (again.stats.cached_prompt_tokens, again.stats.cached_from) == (299, "memory")
    assert again.token_ids == cold(a)
    assert gen.prefix_cache.hits == 2


def test_two_alternating_conversations_both_hit(tiny_bundle, tiny_draft_bundle, text_ids, cold):
    """As a server runs them: one generator (its own previous call reused too), a draft model
    drafting (its session follows the context by itself), two conversations taking turns."""
    gen = lru_generator(tiny_bundle, draft=tiny_draft_bundle, reuse_cache=True)
    first = {"a": text_ids[:250], "b": text_ids[600:850]}
    replies = {k: gen.generate(p, max_tokens=NEW).token_ids for k, p in first.items()}
    for k, more in [("a", text_ids[3000:3020]), ("b", text_ids[3100:3120])]:
        turn = first[k] + replies[k] + more
        r = gen.generate(turn, max_tokens=NEW)
        assert r.stats.cached_from == "memory"
        # the first turn's prompt and reply (the last token too when a pass emitted more than asked for)
        assert len(first[k]) + NEW - 1 <= r.stats.cached_prompt_tokens <= len(first[k]) + NEW
        assert r.token_ids == cold(turn)
    assert gen.prefix_cache.hits == 2


def test_memory_bound_evicts_least_recently_used(tiny_bundle, text_ids, cold):
    row = Session(tiny_bundle).cache.row_nbytes + 4  # a token's KV rows and its id
    entry = row * (200 + NEW - 1)  # one call's entry at most: prompt and reply but the last token
    gen = lru_generator(tiny_bundle, max_bytes=int(2.5 * entry))
    cache = gen.prefix_cache
    prompts = [text_ids[i * 400:i * 400 + 200] for i in range(4)]
    for p in prompts[:3]:
        gen.generate(p, max_tokens=NEW)
    assert (len(cache), cache.evictions) == (2, 1) and cache.nbytes <= cache.max_bytes
    assert gen.generate(prompts[1], max_tokens=NEW).stats.cached_prompt_tokens == 199  # now the most recent
    gen.generate(prompts[3], max_tokens=NEW)  # evicts prompts[2]'s entry, the least recently used
    assert (len(cache), cache.evictions) == (2, 2) and cache.nbytes <= cache.max_bytes
    for i, cached in [(1, 199), (3, 199), (2, 0), (0, 0)]:
        r = gen.generate(prompts[i], max_tokens=NEW)
        assert r.stats.cached_prompt_tokens == cached, i
        assert r.token_ids == cold(prompts[i])
    assert cache.nbytes <= cache.max_bytes
    # an entry larger than the whole bound keeps the start that fits
    small = lru_generator(tiny_bundle, max_bytes=row * 100)
    small.generate(prompts[0], max_tokens=NEW)
    assert (len(small.prefix_cache), small.prefix_cache.nbytes) == (1, row * 100)
    r = small.generate(prompts[0], max_tokens=NEW)
    assert r.stats.cached_prompt_tokens == 100 and r.token_ids == cold(prompts[0])


def test_eviction_during_a_request_does_not_break_it(tiny_bundle, text_ids, cold):
    """The running request owns its rows (entries are copies): evicting the entry it started
    from, halfway through, changes nothing."""
    row = Session(tiny_bundle).cache.row_nbytes + 4
    gen = lru_generator(tiny_bundle, max_bytes=row * 330)  # room for one entry
    other = Generator(Session(tiny_bundle), prefix_cache=gen.prefix_cache)  # sharing the cache
    a, b = text_ids[:300], text_ids[:280] + text_ids[5000:5010]
    gen.generate(a, max_tokens=NEW)
    stats = Stats()
    stream = gen.stream(b, max_tokens=NEW, stats=stats)
    tokens = next(stream).token_ids  # prefilled after the entry's 280 rows
    other.generate(text_ids[6000:6100], max_tokens=2)
    assert len(gen.prefix_cache) == 1 and gen.prefix_cache.evictions == 1  # a's entry went
    tokens += [t for chunk in stream for t in chunk.token_ids]
    assert stats.cached_prompt_tokens == 280 and tokens == cold(b)


# --- disk -----------------------------------------------------------------------------------

def disk_generator(bundle, folder, **kwargs) -> Generator:
    session = Session(bundle)
    return Generator(session, prompt_store=PromptStore(session, folder, **kwargs))


def stored_file(folder):
    files = sorted(folder.glob("*.kv"))
    assert len(files) == 1, files
    return files[0]


def test_a_fresh_process_reuses_the_stored_prompt(tiny_bundle, text_ids, cold, tmp_path):
    prompt = text_ids[:300]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a valid entry: not one warning
        first = disk_generator(tiny_bundle, tmp_path).generate(prompt, max_tokens=NEW)
        path = stored_file(tmp_path)
        assert first.stats.cached_prompt_tokens == 0
        again = disk_generator(tiny_bundle, tmp_path).generate(prompt, max_tokens=NEW)  # fresh sessions
        assert (again.stats.cached_prompt_tokens, again.stats.cached_from) == (299, "disk")
        assert again.token_ids == first.token_ids == cold(prompt)
        tail = prompt[:290] + text_ids[4000:4020]  # same files, another question
        r = disk_generator(tiny_bundle, tmp_path).generate(tail, max_tokens=NEW)
        assert (r.stats.cached_prompt_tokens, r.stats.cached_from) == (290, "disk")
        assert r.token_ids == cold(tail)
    assert path.read_bytes().startswith(MAGIC)
    assert stored_file(tmp_path) == path  # a new question (19 tokens not stored) adds no file
    disk_generator(tiny_bundle, tmp_path).generate(text_ids[1000:1200], max_tokens=NEW)  # < 256: not stored
    assert stored_file(tmp_path) == path
    # a prompt extending a stored one by min_tokens replaces it (the context is 512 here: 64)
    longer = prompt + text_ids[4000:4100]
    disk_generator(tiny_bundle, tmp_path, min_tokens=64).generate(longer, max_tokens=NEW)
    assert stored_file(tmp_path) != path
    r = disk_generator(tiny_bundle, tmp_path).generate(longer, max_tokens=NEW)
    assert r.stats.cached_prompt_tokens == len(longer) - 1 and r.token_ids == cold(longer)


def _rewrite_header(path, **changes):
    data = path.read_bytes()
    length = int.from_bytes(data[len(MAGIC):len(MAGIC) + 4], "little")
    start = len(MAGIC) + 4
    header = json.loads(data[start:start + length])
    header.update(changes)
    raw = json.dumps(header).encode()
    path.write_bytes(MAGIC + len(raw).to_bytes(4, "little") + raw + data[start + length:])


def _flip_payload_byte(path, foreign):
    data = bytearray(path.read_bytes())
    data[-1000] ^= 0x40
    path.write_bytes(bytes(data))


def _truncate(path, foreign):
    path.write_bytes(path.read_bytes()[:-4096])


def _newer_version(path, foreign):
    _rewrite_header(path, version=99)


def _not_ours(path, foreign):
    path.write_bytes(b"GIF89a" + path.read_bytes())


def _another_bundles(path, foreign):
    """The file written for another bundle (same tokenizer and KV shapes) under this bundle's
    name, as a collision of the names' hash prefixes would put it."""
    foreign.replace(path)


@pytest.mark.parametrize("damage, reason", [
    (_flip_payload_byte, "payload checksum mismatch (corrupt file)"),
    (_truncate, "bytes, its header says"),
    (_newer_version, "format version 99, this edgespec reads version 1"),
    (_not_ours, "not a prompt cache file (no edgespec header)"),
    (_another_bundles, "made for another bundle (or another version of this one)"),
])
def test_a_damaged_or_foreign_file_is_ignored_with_a_warning(tiny_bundle, tiny_draft_bundle, text_ids, cold,
                                                            tmp_path, damage, reason):
    prompt = text_ids[:300]
    disk_generator(tiny_bundle, tmp_path).generate(prompt, max_tokens=NEW)
    path = stored_file(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    disk_generator(tiny_draft_bundle, other).generate(prompt, max_tokens=1)
    damage(path, stored_file(other))
    with pytest.warns(PromptCacheWarning) as caught:
        r = disk_generator(tiny_bundle, tmp_path).generate(prompt, max_tokens=NEW)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith(f"ignoring prompt cache file {path}: ") and reason in message
    assert r.stats.cached_prompt_tokens == 0 and r.token_ids == cold(prompt)
    # the run that could not use the file wrote it again
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = disk_generator(tiny_bundle, tmp_path).generate(prompt, max_tokens=NEW)
    assert (r.stats.cached_prompt_tokens, r.stats.cached_from) == (299, "disk")
    assert r.token_ids == cold(prompt)


def test_another_bundles_files_are_not_candidates(tiny_bundle, tiny_draft_bundle, text_ids, cold, tmp_path):
    prompt = text_ids[:300]
    disk_generator(tiny_draft_bundle, tmp_path).generate(prompt, max_tokens=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = disk_generator(tiny_bundle, tmp_path).generate(prompt, max_tokens=NEW)
    assert r.stats.cached_prompt_tokens == 0 and r.token_ids == cold(prompt)
    assert len(list(tmp_path.glob("*.kv"))) == 2


def test_a_failed_write_leaves_nothing_behind(tiny_bundle, text_ids, tmp_path, monkeypatch):
    """Written atomically: a disk that fills up mid-write leaves no file and no temporary, and
    the next process finds nothing to (mis)use."""
    import builtins

    from edgespec.runtime import prompt_store

    class FullDisk:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            if self.written:
                raise OSError(28, "No space left on device")
            self.written += 1
            return self.f.write(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(prompt_store, "open", lambda *a, **k: FullDisk(builtins.open(*a, **k)), raising=False)
    with pytest.warns(PromptCacheWarning, match=r"prompt cache not written: cannot write to .*\.kv: "
                                                r"No space left on device"):
        disk_generator(tiny_bundle, tmp_path).generate(text_ids[:300], max_tokens=2)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []
    r = disk_generator(tiny_bundle, tmp_path).generate(text_ids[:300], max_tokens=2)
    assert r.stats.cached_prompt_tokens == 0 and len(list(tmp_path.glob("*.kv"))) == 1


def test_disk_bound_removes_least_recently_used(tiny_bundle, text_ids, tmp_path):
    size = 299 * (4 + Session(tiny_bundle).cache.row_nbytes)  # payload of one 300-token prompt
    gen = disk_generator(tiny_bundle, tmp_path, max_bytes=int(2.5 * size))
    p0, p1, p2 = [text_ids[i * 400:i * 400 + 300] for i in range(3)]
    gen.generate(p0, max_tokens=1)
    gen.generate(p1, max_tokens=1)
    assert disk_generator(tiny_bundle, tmp_path).generate(p0, max_tokens=1).stats.cached_from == "disk"
    gen.generate(p2, max_tokens=1)  # three files do not fit: p1's, the least recently used, goes
    assert len(list(tmp_path.glob("*.kv"))) == 2 and gen.prompt_store.nbytes() <= 2.5 * size
    for prompt, cached in [(p0, 299), (p1, 0)]:
        assert disk_generator(tiny_bundle, tmp_path).generate(prompt, max_tokens=1).stats.cached_prompt_tokens == cached


# --- the commands ---------------------------------------------------------------------------

def _cli(*args, input=None):
    from click.testing import CliRunner
    from edgespec.apps.cli import cli
    r = CliRunner().invoke(cli, [str(a) for a in args], input=input)
    assert r.exit_code == 0, r.output
    return r


def _long_text(text_ids, tiny_bundle) -> str:
    return Generator(Session(tiny_bundle)).tokenizer.decode(text_ids[:300])


def test_run_reopened_reuses_the_prompt_from_disk(tiny_bundle, text_ids, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESPEC_CACHE", str(tmp_path))
    prompt = _long_text(text_ids, tiny_bundle)
    n = len(Generator(Session(tiny_bundle)).encode(prompt))
    args = ["run", prompt, "--raw", "--target", tiny_bundle, "--draft", "none", "--max-tokens", NEW]
    off = _cli(*args, "--no-prompt-cache")
    assert not list(tmp_path.glob("prompts/*"))
    first = _cli(*args)
    assert "cached" not in first.stderr and len(list(tmp_path.glob("prompts/*.kv"))) == 1
    second = _cli(*args)
    assert f"prefill {n} tok ({n - 1} cached, disk) in " in second.stderr
    assert off.stdout == first.stdout == second.stdout


def test_chat_reopened_with_the_same_system_prompt_reuses_it(tiny_bundle, text_ids, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGESPEC_CACHE", str(tmp_path))
    system = _long_text(text_ids, tiny_bundle)
    args = ["chat", "--target", tiny_bundle, "--draft", "none", "--max-tokens", 8, "--system", system]
    first = _cli(*args, input="What does it do?\n/stats\n/exit\n")
    assert "0 reused from the cache," in first.output
    second = _cli(*args, input="What does it do?\n/stats\n/exit\n")
    reused = re.search(r"(\d+) reused from the cache \(disk\)", second.output)
    assert reused and int(reused.group(1)) > 300
    assert first.stdout == second.stdout
