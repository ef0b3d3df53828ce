"""Execution providers: which ones this machine has, and a safe fallback."""

from __future__ import annotations

import warnings

import onnxruntime as ort

from ..contract.errors import EdgespecError

ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "dml": "DmlExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "webgpu": "WebGpuExecutionProvider",
}


def available() -> list[str]:
    return ort.get_available_providers()


def canonical(name: str) -> str:
    return ALIASES.get(name.lower(), name)


def session_providers(name: str, strict: bool = False) -> list[str]:
    """Providers for a session: the requested one (+ CPU), or CPU with a warning.

    strict: the user insisted on this provider, so its absence is an error.
    """
    wanted = canonical(name)
    have = available()
    if wanted in have:
        return [wanted] if wanted == "CPUExecutionProvider" else [wanted, "CPUExecutionProvider"]
    message = (f"execution provider '{name}' is not available in this onnxruntime "
               f"(available: {', '.join(have)})")
    if strict:
        raise EdgespecError(message)
    warnings.warn(message + "; falling back to CPUExecutionProvider", stacklevel=2)
    return ["CPUExecutionProvider"]
