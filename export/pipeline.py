"""SOURCE -> bundle: resolve, build, rewrite for tree attention, check parity, write manifest.

The bundle is assembled in a hidden sibling folder (`.NAME.partial-PID`) and
renamed into place at the end, and its manifest is written last: an interrupted
export leaves nothing that looks like a bundle, and a bundle it replaces stays
whole until then. --force replaces only a bundle (check_output_dir).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from ..contract import __version__, files
from ..contract.errors import EdgespecError
from ..contract.manifest import MANIFEST_NAME, Manifest
from . import last_logits, sources
from .builder import build_graph
from .cache import remove_stale_work
from .draft_vocab import default_size, write_draft_head
from .prefill_graph import wants_prefill_graph, write_prefill_graph
from .extras import require_export
from .parity import BundleLogits, parity_report
from .publish import DEFAULT_MAX_CONTEXT, context_rows, publish
from .recipes import Recipe
from .tokenizer_files import copy_tokenizer, stop_token_ids, tokenizer_sha256
from .tree_attention import rewrite_file

_NP_DTYPES = {1: "float32", 10: "float16"}


@dataclass
class ExportOptions:
    recipe: Recipe = Recipe()
    max_context: int | None = None
    role: str | None = None  # target/draft; presets know theirs
    force: bool = False
    # runs the bundle for the logits check against the source (the runtime's session.bundle_logits,
    # passed by apps and quant: export does not import the runtime); None: no check
    parity: BundleLogits | None = None
    threads: int | None = None
    layers: str | None = None  # keep only these decoder layers ("0-19"): a self-speculation draft
    draft_vocab: int | None = None  # rows of a frequent-token draft head (None: draft_vocab.default_size)


def check_output_dir(out: Path, force: bool, source: str | None = None) -> None:
    """Refuse, before any work, an output that export must not replace: --force replaces only a
    bundle, and never the source, the working directory, a folder holding either, or a mount point."""
    if out.exists() and not out.is_dir():
        raise EdgespecError(f"output '{out}' exists and is not a folder")
    if not out.is_dir():
        return
    real = out.resolve()
    src = Path(source).expanduser() if source else None
    if src is not None and src.exists():
        if src.resolve() == real:
            raise EdgespecError(f"output folder '{out}' is the source; choose another -o")
        if real in src.resolve().parents:
            raise EdgespecError(f"output folder '{out}' holds the source '{source}'; choose another -o")
    cwd = Path.cwd().resolve()
    if cwd == real:
        raise EdgespecError(f"output folder '{out}' is the working directory; choose another -o")
    if real in cwd.parents:
        raise EdgespecError(f"output folder '{out}' holds the working directory; choose another -o")
    if os.path.ismount(real):
        raise EdgespecError(f"output folder '{out}' is a mount point; choose a new folder inside it")
    if any(out.iterdir()):
        if not force:
            raise EdgespecError(f"output folder '{out}' is not empty; choose another -o or pass --force to replace it")
        if not (out / MANIFEST_NAME).is_file():
            raise EdgespecError(f"output folder '{out}' is not an edgespec bundle (no {MANIFEST_NAME}); "
                                "--force replaces only a bundle: choose another -o")


def _claim_work(out: Path) -> Path:
    """This export's hidden work folder next to `out`; made here, so that an output that
    cannot be written is refused before the build."""
    work = files.work_path(out, "partial")
    try:
        if work.exists():  # this PID's: a dead process's, whose PID we now have
            shutil.rmtree(work)
        work.mkdir(parents=True)
    except OSError as e:
        raise files.write_error(out, e) from None
    return work


def export(source: str, out: str | Path, options: ExportOptions | None = None) -> Manifest:
    options = options or ExportOptions()
    recipe = options.recipe.validate()
    require_export()
    out = Path(out).absolute()
    # what a killed export of `out` left (only that: the folder is the user's); before the check,
    # as it may put a bundle back at `out`
    files.remove_stale(out.parent, out.name, kinds=("partial", "old"))
    remove_stale_work()
    check_output_dir(out, options.force, source)
    work = _claim_work(out)
    from .gguf_export import export_gguf, streams
    if streams(source, recipe):  # a graph built from the GGUF itself, streamed tensor by tensor
        return export_gguf(source, out, work, options)
    stages = ["resolve source", "build graph", "tree attention", "tokenizer", "parity", "finish"]
    bar = tqdm(total=len(stages), desc="export", unit="stage", file=sys.stderr, leave=True)
    started = time.time()
    try:
        bar.set_postfix_str(stages[0])
        resolved = sources.resolve(source)
        kept = None
        if options.layers:
            resolved, kept = _shallow(resolved, options.layers)
        bar.update()
        bar.set_postfix_str(stages[1])
        build = work / "build"
        build_graph(resolved.hf_dir, build, recipe, work / "cache", work / "builder.log")
        bundle = work / "bundle"
        bundle.mkdir()
        for f in build.iterdir():
            if f.name.startswith("model.onnx") or f.name == "genai_config.json":
                shutil.move(str(f), bundle / f.name)
        bar.update()
        bar.set_postfix_str(stages[2])
        shutil.copy2(bundle / "model.onnx", bundle / "model.genai.onnx")  # plain graph, same weights
        rewrite_file(bundle / "model.onnx")
        last_logits.rewrite_file(bundle / "model.onnx")
        _point_genai_config(bundle / "genai_config.json", "model.genai.onnx")
        bar.update()
        bar.set_postfix_str(stages[3])
        copy_tokenizer(resolved.hf_dir, bundle)
        manifest = _manifest(resolved, bundle, recipe, options, source)
        manifest.inputs["num_logits"] = last_logits.NUM_LOGITS
        manifest.layers_kept = kept
        if kept is not None and options.role is None:
            manifest.role = "draft"
        draft_vocab = options.draft_vocab if options.draft_vocab is not None else default_size(manifest)
        if draft_vocab:
            manifest.draft_head = write_draft_head(bundle, manifest, draft_vocab)
        if wants_prefill_graph(manifest):
            bar.set_postfix_str("int8 prefill graph")
            manifest.prefill_graph = write_prefill_graph(bundle, manifest)
        bar.update()
        bar.set_postfix_str(stages[4])
        if options.parity:
            from transformers import AutoTokenizer
            tok = AutoTokenizer.from_pretrained(str(bundle))
            manifest.parity = parity_report(resolved.hf_dir, bundle, manifest, tok, options.parity, options.threads)
        bar.update()
        bar.set_postfix_str(stages[5])
        publish(bundle, manifest, out, resolved.gguf_path, started)
        bar.update()
    finally:
        bar.close()
        shutil.rmtree(work, ignore_errors=True)
    return manifest


def _manifest(resolved, bundle: Path, recipe: Recipe, options: ExportOptions, options_source: str) -> Manifest:
    import onnx
    from transformers import AutoTokenizer
    config = json.loads((resolved.hf_dir / "config.json").read_text())
    genai = json.loads((bundle / "genai_config.json").read_text())["model"]
    decoder = genai["decoder"]
    graph = onnx.load(str(bundle / "model.onnx"), load_external_data=False).graph
    past = next(i for i in graph.input if i.name.startswith("past_key_values."))
    io_dtype = _NP_DTYPES[past.type.tensor_type.elem_type]
    # the rewrite declared attention_bias as float32; fp16 graphs need it in their io dtype
    if io_dtype != "float32":
        _retype_bias(bundle / "model.onnx", past.type.tensor_type.elem_type)
    tok = AutoTokenizer.from_pretrained(str(bundle))
    limit = int(config.get("max_position_embeddings") or genai.get("context_length") or DEFAULT_MAX_CONTEXT)
    max_context = context_rows(options.max_context, limit)
    return Manifest(
        architecture=config["model_type"],
        role=options.role or _preset_role(resolved) or "target",
        vocab_size=int(genai["vocab_size"]),
        tokenizer_sha256=tokenizer_sha256(bundle),
        num_layers=int(decoder["num_hidden_layers"]),
        num_heads=int(decoder["num_attention_heads"]),
        num_kv_heads=int(decoder["num_key_value_heads"]),
        head_dim=int(decoder["head_size"]),
        hidden_size=int(decoder["hidden_size"]),
        max_context=max_context,
        io_dtype=io_dtype,
        quant=recipe.to_dict(),
        source={"kind": resolved.kind, "name": resolved.name, "sha256": resolved.source_sha256,
                "path": resolved.name if resolved.kind == "preset" else str(Path(options_source).absolute())},
        edgespec_version=__version__,
        eos_token_ids=stop_token_ids(bundle, tok),
        bos_token_id=tok.bos_token_id,
        genai_model_file="model.genai.onnx",
    )


def _retype_bias(path: Path, elem_type: int) -> None:
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    for i in model.graph.input:
        if i.name == "attention_bias":
            i.type.tensor_type.elem_type = elem_type
    onnx.save(model, str(path))


def _point_genai_config(path: Path, filename: str) -> None:
    """onnxruntime-genai keeps running the builder's own graph, for side-by-side baselines."""
    config = json.loads(path.read_text())
    config["model"]["decoder"]["filename"] = filename
    path.write_text(json.dumps(config, indent=4) + "\n")


def _preset_role(resolved) -> str | None:
    if resolved.kind != "preset":
        return None
    from . import presets
    return presets.get(resolved.name).role


def _shallow(resolved, spec: str):
    """The source with only some layers kept, cached next to its full HF folder."""
    import dataclasses
    from ..contract.cache import cache_root
    from .layers import keep_layers, parse_layers
    config = json.loads((resolved.hf_dir / "config.json").read_text())
    kept = parse_layers(spec, int(config["num_hidden_layers"]))
    tag = "-".join(f"{a}" for a in kept) if len(kept) < 8 else f"{kept[0]}-{kept[-1]}x{len(kept)}"
    out = cache_root() / "hf" / f"{resolved.source_sha256[:16]}-layers-{tag}"
    keep_layers(resolved.hf_dir, kept, out)
    return dataclasses.replace(resolved, hf_dir=out), kept
