"""pipeline/precision.py: bf16 on a CPU only with native bf16, AMX or AVX-512 bf16 (read from the CPU's flags), the
reason when refused, and eager attention for training under CPU bf16 (SDPA's CPU backward in bf16 is ~12x slower)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

import pipeline.precision as precision
from pipeline.config import load_config
from pipeline.errors import ConfigError

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: 'auto' and bf16 are the GPU's")


def _cpuinfo(tmp_path, flags: str) -> str:
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: A CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    return str(path)


@pytest.mark.parametrize("flags, found", [
    ("fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8", "amx_bf16"),  # Sapphire Rapids
    ("fpu sse2 avx2 fma avx512f avx512_bf16 avx512_vnni", "avx512_bf16"),  # AMD Zen 4, no AMX
    ("fpu sse2 avx2 fma avx512f avx512_vnni", None),  # AVX-512 without bf16 (Ice Lake)
    ("fpu sse2 avx2 fma avx_vnni", None),  # an AVX2 machine
])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, flags, found):
    assert precision.cpu_bf16_flag(_cpuinfo(tmp_path, flags)) == found
    assert precision.cpu_bf16_flag(str(tmp_path / "missing")) is None


@no_gpu
def test_cpu_bf16_needs_native_bf16_and_says_why(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_flag", lambda: None)
    assert precision.resolve_precision("auto") == "no" and precision.resolve_precision("no") == "no"
    with pytest.raises(ConfigError, match=r"bf16 needs a CUDA GPU or a CPU with native bf16 .*150x slower"):
        precision.resolve_precision("bf16")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        precision.resolve_precision("fp16")
    for flag in precision.BF16_CPU_FLAGS:
        monkeypatch.setattr(precision, "cpu_bf16_flag", lambda flag=flag: flag)
        assert precision.resolve_precision("bf16") == "bf16"
    assert precision.resolve_precision("auto") == "no"  # fp32 stays the CPU default: bf16 is asked for


def _tiny_encoder():
    from transformers import BertConfig, BertModel

    return torch.nn.ModuleDict({"backbone": BertModel(BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16))})


@pytest.mark.parametrize("mixed, device, eager", [("bf16", "cpu", True), ("no", "cpu", False),
                                                   ("bf16", "cuda", False)])
def test_training_under_cpu_bf16_uses_eager_attention(mixed, device, eager):
    model = _tiny_encoder()
    assert model["backbone"].config._attn_implementation == "sdpa"
    precision.attention_for_training(model, SimpleNamespace(mixed_precision=mixed, device=torch.device(device)))
    assert (model["backbone"].config._attn_implementation == "eager") == eager


@no_gpu
@pytest.mark.skipif(precision.cpu_bf16_flag() is None, reason="this CPU has no native bf16: bf16 is refused here")
def test_train_fold_under_cpu_bf16_trains_on_eager_attention_and_predicts_finite_logits(monkeypatch):
    import pipeline.train as train
    from conftest import make_frames
    from pipeline.inputs import Encoded, tokenize
    from pipeline.models import load_tokenizer

    train_frame, test, _ = make_frames(n_train=64, n_test=8)
    cfg = load_config(None, ["model.preset=tiny-encoder", "train.epochs=1", "train.batch_size=8", "cv.n_folds=2",
                             "train.mixed_precision=bf16"])
    tok = load_tokenizer(cfg.model)
    labels = train_frame[["anger", "fear", "joy", "trust"]].to_numpy()
    enc = Encoded(tokenize(tok, train_frame["Tweet"], 32), tokenize(tok, test["Tweet"], 32), tok.pad_token_id,
                  "right")
    seen = []
    real = precision.attention_for_training

    def spy(model, accelerator):
        real(model, accelerator)
        seen.extend(m.config._attn_implementation for m in model.modules() if hasattr(m, "set_attn_implementation"))

    monkeypatch.setattr(train, "attention_for_training", spy)
    from pipeline.cv import make_accelerator

    accelerator = make_accelerator(cfg)
    assert accelerator.mixed_precision == "bf16"
    result = train.train_fold(cfg, 0, np.arange(64) % 2, labels, enc, accelerator, None, tok)
    assert seen and set(seen) == {"eager"}
    assert np.isfinite(result.val_logits).all() and result.val_logits.dtype == np.float32
