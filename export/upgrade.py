"""Bring a bundle exported by an older edgespec up to the current graph features.

The upgrades add graphs beside the weights (the weight file is never rewritten) and
take seconds (the int8 prefill graph of the 1.5B: 25 s), so cached preset bundles get
them on first use instead of a minutes-long re-export. Each step is idempotent and the
manifest is written last, so an interrupted upgrade is finished by the next one.

Every upgrade records the files' sizes and sha256 again (contract/integrity.py);
a bundle exported before those records gets them here, from its files as they
are now (a one-time hash, noted on stderr).
"""

from __future__ import annotations

import sys
from pathlib import Path

import onnx

from ..contract.integrity import record_files, verify
from ..contract.manifest import bundle_bytes, read_manifest
from . import last_logits
from .draft_vocab import default_size, write_draft_head
from .prefill_graph import wants_prefill_graph, write_prefill_graph


def upgrade(bundle: Path) -> bool:
    """Add `num_logits`, the draft head a draft gets by default, the int8 prefill graph an int4
    target gets, and the per-file records; return whether anything changed."""
    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    verify(bundle, manifest)  # never re-record damaged files as good (stamped: a stat per file)
    changed = False
    if "num_logits" not in manifest.inputs:
        graph = onnx.load(str(bundle / manifest.model_file), load_external_data=False).graph
        if last_logits.NUM_LOGITS not in {i.name for i in graph.input}:
            last_logits.rewrite_file(bundle / manifest.model_file)
        manifest.inputs["num_logits"] = last_logits.NUM_LOGITS
        changed = True
    draft_vocab = default_size(manifest)
    if draft_vocab and not manifest.draft_head:
        manifest.draft_head = write_draft_head(bundle, manifest, draft_vocab)
        manifest.sizes["bundle_bytes"] = bundle_bytes(bundle, manifest)
        changed = True
    if wants_prefill_graph(manifest) and not manifest.prefill_graph:
        print(f"edgespec: adding the int8 prefill graph to {bundle} (seconds; prompts prefill "
              "2-4x faster)", file=sys.stderr)
        manifest.prefill_graph = write_prefill_graph(bundle, manifest)
        manifest.sizes["bundle_bytes"] = bundle_bytes(bundle, manifest)
        changed = True
    if not manifest.files:
        print(f"edgespec: recording file hashes of {bundle} (exported before integrity checks); "
              "later changes to its files will be detected", file=sys.stderr)
        changed = True
    if changed:
        manifest.files = record_files(bundle)
        manifest.write(bundle)
    return changed
