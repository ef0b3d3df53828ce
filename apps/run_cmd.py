"""`edgespec run "PROMPT"`: one prompt, text streamed to stdout, stats to stderr."""

from __future__ import annotations

import sys
import time

import click

from ..runtime.drafters import choices as drafter_choices
from .options import BUDGET, MAX_TOKENS, SEED, THREADS, Invocation, not_empty, pass_invocation

DEFAULT_TARGET = "qwen2.5-coder-1.5b"
DEFAULT_DRAFT = "qwen2.5-coder-0.5b"


def model_options(f):
    """Flags shared by run and chat."""
    options = [
        click.option("--target", default=DEFAULT_TARGET, show_default=True, help="bundle folder or preset"),
        click.option("--draft", default=DEFAULT_DRAFT, show_default=True, help="bundle, preset, or 'none'"),
        click.option("--drafter", type=click.Choice(drafter_choices()),
                     default=None, help="default: auto when a draft is given, else none"),
        click.option("--tree/--chain", default=True, show_default=True, help="draft a token tree or a chain"),
        click.option("--budget", type=BUDGET, default=8, show_default=True, help="max drafted tokens per pass"),
        click.option("--threads", type=THREADS, default=None, help="intra-op threads (default: physical cores)"),
        click.option("--provider", default="cpu", show_default=True, help="execution provider"),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def sampling_options(f):
    options = [
        click.option("--max-tokens", type=MAX_TOKENS, default=256, show_default=True),
        click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy"),
        click.option("--top-p", type=float, default=1.0, show_default=True),
        click.option("--top-k", type=int, default=0, show_default=True, help="0 = off"),
        click.option("--seed", type=SEED, default=None),
    ]
    for option in reversed(options):
        f = option(f)
    return f


prompt_cache_option = click.option(
    "--prompt-cache/--no-prompt-cache", default=True, show_default=True,
    help="keep the KV of prompts of 256+ tokens on disk (in the cache folder, 2 GiB at most), so a "
         "later run starting with the same system prompt and files prefills only what is new")


def use_prompt_cache(gen, on: bool) -> None:
    """Give `gen` the on-disk prompt cache of its target bundle (runtime/prompt_store.py)."""
    from ..runtime.prompt_store import PromptStore
    gen.prompt_store = PromptStore(gen.target) if on else None


def check_sampling(temperature, top_p, top_k, seed) -> None:
    """Refuse bad sampling values before the models load (NaN included, which click lets through)."""
    from ..runtime.sampling import SamplingParams
    SamplingParams(temperature, top_p, top_k, seed).validate()


def load_generator(target, draft, drafter, tree, budget, threads, provider, shared_pool: bool,
                   huge_pages=False):
    """shared_pool: ONNX Runtime's process-wide pool (Invocation.owns_process)."""
    from ..runtime.api import load
    from .prepare import bundle_path
    if drafter in ("ngram", "recycle", "none"):
        draft = None  # model-free drafters: do not load (or export) a draft model
    return load(bundle_path(target), None if draft in (None, "none") else bundle_path(draft), tree=tree,
                budget=budget, drafter=drafter, threads=threads, provider=provider, shared_pool=shared_pool,
                huge_pages=huge_pages)


@click.command("run")
@pass_invocation
@click.argument("prompt", callback=not_empty("prompt"))
@model_options
@sampling_options
@click.option("--raw", is_flag=True, help="feed the prompt as is, without the chat template")
@click.option("--stop", multiple=True, callback=not_empty("stop string"), help="stop string (repeatable)")
@click.option("--suffix", default=None,
              help="fill in the middle: PROMPT is the code before the gap, SUFFIX the code after it "
                   "(fed raw in the bundle's FIM format; prints the middle)")
@prompt_cache_option
def run_command(invocation: Invocation, prompt, target, draft, drafter, tree, budget, threads, provider,
                max_tokens, temperature, top_p, top_k, seed, raw, stop, suffix, prompt_cache):
    """Generate a reply to PROMPT, streamed."""
    check_sampling(temperature, top_p, top_k, seed)
    gen = load_generator(target, draft, drafter, tree, budget, threads, provider, invocation.owns_process)
    use_prompt_cache(gen, prompt_cache)
    from ..runtime.api import Stats
    stats = Stats()
    sampling = dict(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed,
                    stop=list(stop), stats=stats)
    started, first = time.perf_counter(), None
    if suffix is not None:
        chunks = gen.stream_fim(prompt, suffix, **sampling)
    else:
        chunks = gen.stream(prompt if raw else [{"role": "user", "content": prompt}], **sampling)
    for chunk in chunks:
        first = first or time.perf_counter()
        sys.stdout.write(chunk.text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    total = time.perf_counter() - started
    to_first = first - started if first else total
    click.echo(f"{stats.summary()} | first token {to_first:.2f}s, total {total:.2f}s", err=True)
    click.echo(memory_summary(gen), err=True)


def memory_summary(gen) -> str:
    """Peak RSS against what the models must hold: their bundles and full-context KV caches."""
    from ..contract.manifest import bundle_bytes
    from ..runtime.memory import peak_rss_mb
    sessions = [s for s in (gen.target, gen.draft) if s is not None]
    bundles = sum(bundle_bytes(s.path, s.manifest) for s in sessions) / 2**20
    kv = sum(s.cache.nbytes for s in sessions) / 2**20
    peak = peak_rss_mb()
    return (f"memory: peak RSS {peak:.0f} MiB = {peak / (bundles + kv):.2f}x "
            f"(bundles {bundles:.0f} MiB + KV cache {kv:.0f} MiB)")
