"""`auto` precision: bfloat16 on CPUs with bfloat16 matrix units, float32 elsewhere, decided in
one place (crescent/infra/precision.py), printed once and kept in stats.json."""

import pytest
from omegaconf import OmegaConf

from crescent.infra import precision

# /proc/cpuinfo flag sets of the machines this project has run on, and two made-up edges.
AVX2_ONLY = {"fpu", "sse4_2", "avx", "avx2", "fma"}
AVX512_NO_BF16 = AVX2_ONLY | {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"}
AVX512_BF16 = AVX512_NO_BF16 | {"avx512_bf16"}
AMX = AVX512_BF16 | {"amx_bf16", "amx_tile", "amx_int8"}


@pytest.mark.parametrize(("flags", "dtype"), [
    (set(), "float32"),  # no /proc/cpuinfo
    (AVX2_ONLY, "float32"),
    (AVX512_NO_BF16, "float32"),
    (AVX512_BF16, "bfloat16"),
    (AMX, "bfloat16"),
    ({"amx_bf16"}, "bfloat16"),
    ({"amx_int8", "amx_tile"}, "float32"),  # integer tiles alone do no bfloat16 work
])
def test_auto_dtype_per_cpu_flag_set(flags, dtype, monkeypatch):
    assert precision.cpu_dtype(flags) == dtype
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(precision, "_gpu", lambda: False)
    assert precision.resolve_dtype("auto") == dtype
    assert precision.resolve_precision("auto", "cpu") == "32-true"  # training: float32 on CPU
    assert precision.resolve_precision("auto", "auto") == precision.resolve_precision("auto", "cpu")
    # What a user sets is kept whatever the CPU.
    assert precision.resolve_dtype("float32") == "float32"
    assert precision.resolve_dtype("bfloat16") == "bfloat16"
    assert precision.resolve_precision("32-true", "cpu") == "32-true"
    described = precision.describe("auto")
    assert described["resolved"] == dtype
    assert ("CPU has none of" in described["why"]) == (dtype == "float32")
    # bfloat16 set on a CPU without its units runs, and says what it costs.
    assert ("several times slower" in precision.describe("bfloat16")["why"]) == \
        (dtype == "float32")
    assert precision.describe("float32")["why"] == "set explicitly"


def test_this_machines_flags_are_read():
    flags = precision.cpu_flags()
    assert "fpu" in flags  # every x86 /proc/cpuinfo lists it; the parse found the flags line
    assert precision.resolve_dtype("auto") == precision.cpu_dtype(flags)


def test_the_run_records_what_auto_chose(monkeypatch):
    from crescent.config import Config

    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(AMX))
    monkeypatch.setattr(precision, "_gpu", lambda: False)
    cfg = OmegaConf.structured(Config)
    cfg.model.name = "smollm2-135m-instruct"
    cfg.student.dtype = "float32"
    chosen = precision.run_precision(cfg)
    assert chosen["model.dtype"] == {"configured": "auto", "resolved": "bfloat16",
                                     "why": "CPU has amx_bf16, avx512_bf16"}
    assert chosen["student.dtype"]["resolved"] == "float32"
    assert chosen["finetune.precision"] == "32-true"
    assert precision.precision_line(chosen) == (
        "dtype auto -> bfloat16 (CPU has amx_bf16, avx512_bf16), student float32 -> float32; "
        "training 32-true")
