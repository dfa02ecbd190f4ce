"""The LLVM CPU tuner generates code for: a hypervisor's stand-in CPUID model must not decide it."""

from __future__ import annotations

from tvm.target import Target

from tuner.hardware import llvm_host_cpu
from tuner.schedules.isa import vector_isa

XEON_FLAGS = frozenset({"avx2", "fma", "avx512f", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8"})


def test_a_client_model_on_a_host_with_amx_is_the_server_core() -> None:
    """KVM showed model 167 (rocketlake) for a Xeon whose AVX-512 runs at twice AVX2's rate."""
    mcpu = llvm_host_cpu("rocketlake", XEON_FLAGS)
    assert mcpu == "sapphirerapids"
    assert vector_isa(Target({"kind": "llvm", "mcpu": mcpu})).fma_lanes == 32
    assert llvm_host_cpu("icelake-client", XEON_FLAGS | {"amx_fp16"}) == "graniterapids"


def test_a_real_client_core_and_other_vendors_keep_llvms_name() -> None:
    client = frozenset({"avx2", "fma", "avx512f", "avx512vl"})
    assert llvm_host_cpu("rocketlake", client) == "rocketlake"
    assert vector_isa(Target({"kind": "llvm", "mcpu": "rocketlake"})).fma_lanes == 16
    assert llvm_host_cpu("znver4", XEON_FLAGS) == "znver4"
    assert llvm_host_cpu("emeraldrapids", XEON_FLAGS) == "emeraldrapids"
