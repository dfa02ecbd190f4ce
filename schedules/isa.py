"""What a CPU target's vector unit offers a register-blocked kernel: lanes and registers.

Read from the LLVM target (its `mcpu` and `mattr`), not from the machine this runs on: a
schedule is made for the target's hardware, which a remote node may have and this one not.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm.target import Target


@dataclass(frozen=True)
class VectorISA:
    name: str
    lanes: int  # fp32 elements per vector register
    registers: int  # architectural vector registers
    fma_units: int = 2  # FMA pipes per core (2 on every AVX2/AVX-512 x86 core this targets)
    fma_latency: int = 4  # cycles; 4-5 on Zen 2-4 and Skylake-Ice Lake
    l1d_bytes: int = 32 * 1024  # per core: 32 KiB on Zen 2-4 and Skylake, 48 KiB on Zen 5 and Ice Lake (32 assumed for all)
    # fp32 multiply-adds per cycle per core: twice an AVX2 core's where 512-bit FMAs run at full
    # rate (Zen 5, Xeon Scalable), the same where they are split in two (HALF_RATE_AVX512)
    fma_lanes: int = 16

    @property
    def vector_bits(self) -> int:
        return self.lanes * 32


# LLVM CPUs whose cores run a 512-bit FMA as two 256-bit halves or on one 512-bit pipe: AVX-512
# doubles the register file's width there, not the multiply-adds per cycle (Zen 4's peak measured
# here with AVX-512 matched Zen 3's with AVX2).
# Intel's among them are client cores (tuner.hardware.llvm_host_cpu: KVM may show one's CPUID model
# for a server core).
CLIENT_AVX512 = frozenset({"cannonlake", "icelake-client", "tigerlake", "rocketlake"})
HALF_RATE_AVX512 = CLIENT_AVX512 | {"znver4"}


def _has(feature: str, target: Target) -> bool:
    from tvm.target import codegen

    try:
        return bool(codegen.target_has_features(feature, target))
    except Exception:  # noqa: BLE001 - a target LLVM cannot describe has no such feature
        return False


def vector_isa(target: Target) -> VectorISA:
    """The widest fp32 vector ISA the target has."""
    if _has("avx512f", target):
        half_rate = str(target.attrs.get("mcpu", "")) in HALF_RATE_AVX512
        return VectorISA("avx512", 16, 32, fma_lanes=16 if half_rate else 32)
    if _has("avx2", target) or _has("avx", target):
        return VectorISA("avx2" if _has("fma", target) else "avx", 8, 16)
    if _has("neon", target):
        return VectorISA("neon", 4, 32)
    return VectorISA("sse", 4, 16)


# The ISA the graph rewrites (row and group padding, Winograd) assume without a CPU target: a
# rewrite run outside compilation.
DEFAULT_ISA = VectorISA("avx2", 8, 16)


def target_isa() -> VectorISA:
    """The current CPU target's vector ISA (DEFAULT_ISA without one): what a rewrite pass, which
    gets no target argument, decides for."""
    target = Target.current(allow_none=True)
    return vector_isa(target) if target is not None and target.kind.name == "llvm" else DEFAULT_ISA
