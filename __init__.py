"""edgespec: on-device LLM runtime on ONNX Runtime with lossless tree speculative decoding."""

from .contract import __version__  # noqa: F401


def load(target, draft=None, **kwargs):
    """Load a target bundle or preset (and optionally a draft); a preset's bundle is prepared on
    first use (apps/prepare.py), then runtime.api.load opens the folders."""
    from .apps.prepare import bundle_path
    from .runtime.api import load as _load
    return _load(bundle_path(target), None if draft in (None, "none") else bundle_path(draft), **kwargs)
