"""`edgespec export SOURCE -o DIR`: build a tree-attention bundle."""

from __future__ import annotations

import click

from ..export.recipes import ALGOS, PRECISIONS
from .options import MAX_CONTEXT

BLOCK_SIZES = (16, 32, 64, 128, 256)  # those Recipe.validate accepts


@click.command("export")
@click.argument("source")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="bundle folder to write")
@click.option("--quant", type=click.Choice(PRECISIONS), default="int4", show_default=True)
@click.option("--block-size", type=click.Choice(BLOCK_SIZES), default=None,
              help="int4/int8 quantization block size [default: the preset's, else 32]")
@click.option("--accuracy-level", type=click.IntRange(0, 4), default=None,
              help="MatMulNBits compute precision: 4 = int8, 1 = fp32 [default: 4; for --quant gguf 1, "
              "which computes the GGUF's model within float rounding]")
@click.option("--algo", type=click.Choice(ALGOS), default=None,
              help="int4 block fitting: round to nearest, or k_quant (slower export; with "
              "--block-size 128, faster decoding at nearly the quality of 32) [default: the preset's, else rtn]")
@click.option("--symmetric/--asymmetric", default=None,
              help="int4 rtn blocks: symmetric, or with a zero point fitted per block (k_quant always fits "
              "one) [default: the preset's, else symmetric]")
@click.option("--max-context", type=MAX_CONTEXT, default=None, help="KV cache rows (default: min(model limit, 4096))")
@click.option("--role", type=click.Choice(["target", "draft"]), default=None)
@click.option("--layers", default=None, help="keep only these decoder layers, e.g. 0-19 or 0-13,21-27 "
              "(a shallow self-speculation draft of the same model)")
@click.option("--draft-vocab", type=click.IntRange(min=0), default=None,
              help="also write a draft graph whose LM head keeps only the N most frequent tokens "
              "(default for drafts with a large vocabulary: 32768; 0 = none)")
@click.option("--force", is_flag=True, help="replace an existing bundle (never a folder that is not a bundle, "
              "nor the source or the working directory)")
@click.option("--no-parity", is_flag=True, help="skip the logits check against the source model")
@click.option("--check", is_flag=True, help="also measure top-1 agreement and perplexity vs the source model")
def export_command(source, output, quant, block_size, accuracy_level, algo, symmetric, max_context, role, layers, draft_vocab,
                   force, no_parity, check):
    """Export SOURCE (HF folder, .gguf file, or preset) to an ONNX bundle."""
    from ..contract.errors import InputError
    from ..export.pipeline import ExportOptions, export
    from ..export.recipes import RECIPES, Recipe
    from ..runtime.session import bundle_logits
    preset = _preset(source)
    default = preset.recipe() if preset and quant == "int4" else RECIPES.get(quant, Recipe(quant))
    if accuracy_level is None:
        accuracy_level = default.accuracy_level
    if block_size is None:
        block_size = default.block_size  # the preset's own, where its recipe is the one asked for
    try:
        recipe = Recipe(quant, block_size=block_size, accuracy_level=accuracy_level,
                        algo=algo or default.algo,
                        symmetric=default.symmetric if symmetric is None else symmetric).validate()
    except InputError as e:  # only a combination of the options is left to refuse: --algo with --quant
        raise click.UsageError(str(e)) from None
    manifest = export(source, output, ExportOptions(recipe=recipe, max_context=max_context, role=role,
                                                    force=force, parity=None if no_parity else bundle_logits, layers=layers,
                                                    draft_vocab=draft_vocab))
    p = manifest.parity
    if p:
        click.echo(f"parity vs source: max |logit diff| {p['max_abs_diff']:.4g}, "
                   f"top-1 agreement {p['top1_agreement']:.1%} over {p['positions']} positions", err=True)
    size = manifest.sizes.get("bundle_bytes", 0)
    gguf = manifest.sizes.get("source_gguf_bytes")
    click.echo(f"bundle {output}: {size / 2**20:.1f} MiB" +
               (f" (source GGUF {gguf / 2**20:.1f} MiB)" if gguf else ""), err=True)
    if check:
        from ..quant.quality import quality_report, format_report
        click.echo(format_report(quality_report(output)), err=True)


def _preset(source: str):
    """The preset SOURCE names (its recipe is the default), or None for files and folders."""
    from pathlib import Path
    from ..export import presets
    return presets.get(source) if source in presets.names() and not Path(source).exists() else None
