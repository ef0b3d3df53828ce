"""Quantization recipes as data: what the builder is asked for, recorded in the manifest."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..contract.errors import InputError

PRECISIONS = ("int4", "int8", "fp16", "fp32", "gguf")
# "gguf": the GGUF's own blocks transcoded into MatMulNBits weights, not re-quantized (export/gguf_export.py);
# a GGUF source only. Its accuracy_level is the compute type: 1 (fp32) computes the GGUF's model within
# float rounding (top-1 100% vs the float64 source on the quality text, SmolLM2 and the 0.5B Qwen);
# 4 (int8 activations) is ~2x faster per token and no longer exact (top-1 98.5% on the 0.5B, 93% SmolLM2).
# How block scales are fitted. rtn: round to nearest (onnxruntime's quantizer; symmetric, or with a
# zero point per block); from a GGUF it streams tensor by tensor (export/gguf_export.py, 1:20 for the
# 1.5B). k_quant: searches each block's scale and zero point for the least squared error, through
# onnxruntime-genai's builder, which needs the fp32 model (6.5 min of fitting for the 1.5B, ~20 GB).
ALGOS = ("rtn", "k_quant")


@dataclass(frozen=True)
class Recipe:
    precision: str = "int4"
    block_size: int = 32  # weights per quantization block (int4/int8)
    accuracy_level: int = 4  # MatMulNBits compute type: 4 = int8 activations, 1 = fp32
    symmetric: bool = True  # rtn only: k_quant always fits a zero point per block
    algo: str = "rtn"

    def validate(self) -> "Recipe":
        if self.precision not in PRECISIONS:
            raise InputError(f"unknown quantization '{self.precision}'; choose one of {', '.join(PRECISIONS)}")
        if self.block_size not in (16, 32, 64, 128, 256):
            raise InputError(f"block size must be one of 16, 32, 64, 128, 256 (got {self.block_size})")
        if self.algo not in ALGOS:
            raise InputError(f"unknown quantization algorithm '{self.algo}'; choose one of {', '.join(ALGOS)}")
        if self.algo != "rtn" and self.precision != "int4":
            raise InputError(f"{self.algo} applies to int4 only (got {self.precision})")
        if self.precision == "gguf" and self.block_size != Recipe.block_size:
            raise InputError(f"--quant gguf keeps the GGUF's own blocks; --block-size {self.block_size} does not apply")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise InputError(f"accuracy level must be 0-4 (got {self.accuracy_level}); 4 = int8 compute, 1 = fp32")
        return self

    @property
    def quantized(self) -> bool:
        return self.precision in ("int4", "int8")

    def builder_options(self) -> dict[str, str]:
        """extra_options for onnxruntime-genai's model builder."""
        if not self.quantized:
            return {}
        options = {
            "block_size": str(self.block_size),
            "accuracy_level": str(self.accuracy_level),
            "is_symmetric": str(self.symmetric).lower(),
        }
        if self.algo == "k_quant":  # (the embedding table stays round-to-nearest, symmetric)
            options["algo_config"] = "k_quant"
        if self.precision == "int4":
            # Quantize the embedding table too (GatherBlockQuantized, int4 only), also for GGUFs
            # whose LM head is stored untied: an fp32 table would make the bundle larger than its GGUF.
            options["op_types_to_quantize"] = "MatMul/Gather"
        return options

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        if self.precision == "gguf":  # the block size and fitting are the GGUF's own
            data = {"precision": self.precision, "accuracy_level": self.accuracy_level}
        elif not self.quantized:
            data = {"precision": self.precision}
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Recipe":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


RECIPES = {
    "int4": Recipe("int4"),
    "int8": Recipe("int8"),
    "fp16": Recipe("fp16"),
    "fp32": Recipe("fp32"),
    # 128-weight blocks with a zero point per block: the 1.5B preset's recipe (README, "Recipes")
    "int4-b128": Recipe("int4", block_size=128, symmetric=False),
    "int4-k128": Recipe("int4", block_size=128, algo="k_quant"),
    # the GGUF's blocks as they are, fp32 compute: logits of the GGUF's model within float rounding
    "gguf": Recipe("gguf", accuracy_level=1),
}
