"""What a run computes in: `train.mixed_precision` resolved for this machine, and the attention kernel that
training under it needs.

On a CUDA GPU 'auto' is bf16 (fp16 where the GPU lacks bf16). On a CPU 'auto' is fp32 ('no': the same numbers
on every CPU), and 'bf16' autocast is allowed only where the CPU multiplies bf16 natively: in AMX tiles (Intel
Xeon of the 4th generation and later, `amx_bf16` in /proc/cpuinfo) or with AVX-512 bf16 dot products (AMD Zen 4
and later, Intel Cooper Lake: `avx512_bf16`). On a 2-core AMX machine MiniLM-L6, SmolLM2 LoRA and MPNet trained
1.5-2x faster than in fp32 with scores within fold-to-fold noise (docs/BENCHMARKS.md, "bf16 on a CPU with AMX");
on a 2-core AMD EPYC with `avx512_bf16` and no AMX bf16 matrix products ran 2.1-2.5x fp32's rate ("bf16 with
AVX-512 bf16, no AMX"), while an AMX Xeon with oneDNN capped to AVX-512 bf16 ran them below fp32's rate (stop 43):
on an Intel CPU without AMX, `benchmarks/speed.py --mixed-precision bf16` tells first. On a CPU with neither (the AVX2 machines here) bf16 matrix products run about 150x slower
than fp32, so it is refused with that reason.

PyTorch's fused SDPA attention on CPU runs its backward about 12x slower in bf16 than in fp32 (measured on
MiniLM-L6's shapes), which cancels the gain; training under CPU bf16 therefore switches the model to
transformers' eager attention (matmul + softmax), whose bf16 backward is fast. A fold's own validation and test
prediction then runs on that eager model; a model built for prediction alone (predict.py) keeps SDPA, whose
forward is fast in bf16.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from pipeline.errors import ConfigError


BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of CPUs that multiply bf16 natively


@lru_cache(maxsize=1)
def cpu_bf16_flag(cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """The first of BF16_CPU_FLAGS this CPU advertises (Linux's flag list), or None: none, or unreadable."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return next((flag for flag in BF16_CPU_FLAGS if flag in flags), None)


def resolve_precision(setting: str) -> str:
    """accelerate's mixed_precision for train.mixed_precision on this machine: 'auto' is bf16 (or fp16) on a
    CUDA GPU and 'no' on a CPU; 'bf16' on a CPU needs native bf16 (AMX or AVX-512 bf16), 'fp16' needs a GPU."""
    cuda = torch.cuda.is_available()
    if setting == "auto":
        if not cuda:
            return "no"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if setting == "bf16" and not cuda and cpu_bf16_flag() is None:
        raise ConfigError("train.mixed_precision=bf16 needs a CUDA GPU or a CPU with native bf16 (amx_bf16 or "
                          "avx512_bf16 in /proc/cpuinfo); on this CPU bf16 matrix products run about 150x slower than "
                          "fp32: use 'no' or 'auto'")
    if setting == "fp16" and not cuda:
        raise ConfigError("train.mixed_precision=fp16 needs a CUDA GPU; on a CPU use 'no', 'auto' or, with native "
                          "bf16 (AMX or AVX-512 bf16), 'bf16'")
    return setting


def attention_for_training(model: torch.nn.Module, accelerator) -> None:
    """Under bf16 autocast on a CPU, put every transformers model inside `model` on eager attention (SDPA's
    CPU backward is ~12x slower in bf16); anywhere else leave it as built."""
    from transformers import PreTrainedModel

    if accelerator.mixed_precision != "bf16" or accelerator.device.type != "cpu":
        return
    for module in model.modules():
        if isinstance(module, PreTrainedModel) and module.config._attn_implementation != "eager":
            module.set_attn_implementation("eager")
