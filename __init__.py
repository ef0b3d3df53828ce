"""edgespec: on-device LLM runtime on ONNX Runtime with lossless tree speculative decoding."""

__version__ = "0.1.0"


def load(*args, **kwargs):
    """Load a target bundle or preset (and optionally a draft); see runtime.api.load."""
    from .runtime.api import load as _load
    return _load(*args, **kwargs)
