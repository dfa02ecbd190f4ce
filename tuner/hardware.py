"""Hardware fingerprints: what decides whether a schedule is valid and fast on a machine.

Records are served only for an exact key match, so the key holds what changes the generated
code or its speed (ISA features LLVM uses, the CPU model LLVM tunes for, the core count the
schedule parallelizes over) and nothing that does not (host name, clock jitter, memory size).
"""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

from .cluster.worker_tasks import CPU_TIMING, GPU_TIMING

# CPU flags that change what LLVM may emit; others (e.g. `hypervisor`) are noise for the key.
_LLVM_FEATURES = (
    "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512cd",
    "avx512bw", "avx512vl", "avx512_vnni", "avx512vnni", "avx512_bf16", "avx512_fp16",
    "avx512ifma", "avx512vbmi", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16",
    "asimd", "neon", "sve", "sve2", "asimddp", "i8mm", "bf16",
)


@dataclass(frozen=True)
class Fingerprint:
    kind: str
    arch: str
    cpu_model: str
    mcpu: str
    features: tuple[str, ...] = field(default_factory=tuple)
    num_cores: int = 1
    # How its records were timed: since 2026-12-05 call by call, each after the kernel's weights
    # were flushed from the caches (cluster/worker_tasks.py). Records timed back to back, weights in cache, ranked schedules
    # by a time the model never sees, so they stay under the old key (their family is the same:
    # they still seed searches as a warm start and train the family's cost model).
    timing: str = CPU_TIMING

    @property
    def key(self) -> str:
        """Stable across runs and machines of the same kind: a hash of the canonical fields."""
        return _digest(self.kind, asdict(self))

    @property
    def family(self) -> str:
        """Machines whose schedules transfer (same ISA and LLVM tuning, any core count or clock).

        Their records are never served as final here, but seed the search as a warm start.
        """
        fields = {"kind": self.kind, "arch": self.arch, "mcpu": self.mcpu, "features": self.features}
        return _digest(f"{self.kind}-family", fields)

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "family": self.family, **asdict(self), "features": list(self.features)}


def _digest(prefix: str, fields: dict[str, Any]) -> str:
    payload = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=list)
    return f"{prefix}-{hashlib.sha256(payload.encode()).hexdigest()[:16]}"


@lru_cache(maxsize=1)
def _host_info() -> tuple[str, frozenset[str]]:
    import cpuinfo

    info = cpuinfo.get_cpu_info()
    return str(info.get("brand_raw", "unknown")), frozenset(f.lower() for f in info.get("flags", []))


def _host_cpu() -> tuple[str, tuple[str, ...]]:
    brand, flags = _host_info()
    return brand, tuple(f for f in _LLVM_FEATURES if f in flags)


# The Intel server cores, newest first, that a hypervisor may present under the CPUID model of a
# client core with half-rate AVX-512 (`schedules/isa.py`'s CLIENT_AVX512): the marks are flags only
# the server core has (AMX is server-only; Granite Rapids adds AMX-FP16).
_SERVER_CORES = (("graniterapids", ("amx_tile", "amx_fp16")), ("sapphirerapids", ("amx_tile",)))


def llvm_host_cpu(system_cpu: str | None = None, flags: frozenset[str] | None = None) -> str:
    """The LLVM CPU to generate and tune code for on this host.

    LLVM names the host by CPUID's family and model, and KVM may show a client model for a
    server core: a 2-core Xeon VM with AMX and two 512-bit FMA pipes (441 GFLOP/s measured with
    AVX-512 against 240 with AVX2) called itself `rocketlake`, a client core with one pipe. The
    name decides the ISA model the schedule rules use (`schedules/isa.py`: half-rate AVX-512 kept
    resnet50's 7x7 layers in Winograd) and LLVM's tuning: the default resnet50 module ran 0.92x
    as long compiled for `sapphirerapids`. So a client name on a host with server-only flags
    becomes the newest server core whose marks the host has.
    """
    from tvm.target import codegen

    from .schedules.isa import CLIENT_AVX512

    if system_cpu is None:
        system_cpu = str(codegen.llvm_get_system_cpu())
    if flags is None:
        flags = _host_info()[1]
    if system_cpu in CLIENT_AVX512:
        for server, marks in _SERVER_CORES:
            if all(mark in flags for mark in marks):
                return server
    return system_cpu


def machine() -> str:
    """This host in words, for benchmark results: CPU brand, LLVM's name for it, core count."""
    import psutil
    from tvm.target import codegen

    brand, _ = _host_cpu()
    seen = str(codegen.llvm_get_system_cpu())
    llvm = llvm_host_cpu(seen)
    name = llvm if llvm == seen else f"{llvm}; CPUID model: {seen}"
    return f"{brand} ({name}), {psutil.cpu_count(logical=False)} cores"


def cpu_fingerprint(target: dict[str, Any]) -> Fingerprint:
    """Fingerprint of the host CPU as a given llvm target uses it."""
    brand, features = _host_cpu()
    return Fingerprint(
        kind="cpu",
        arch=platform.machine(),
        cpu_model=brand,
        # Without mcpu LLVM emits generic code: a different (slower) kernel, so a different key.
        mcpu=str(target.get("mcpu") or "generic"),
        features=features,
        num_cores=int(target.get("num-cores", 1)),
    )


@dataclass(frozen=True)
class GpuFingerprint:
    """A CUDA GPU: its model and compute capability decide the code and its speed.

    Memory size, driver, clocks and the host CPU do not enter the key (the host only launches
    kernels); GPUs of one compute capability form a family whose records warm-start each other.
    """

    name: str
    arch: str
    compute_capability: str
    kind: str = "cuda"
    # How its records were timed: since 2026-12-04 each launch after an L2 flush
    # (cluster/worker_tasks.py). Records timed with a warm L2 read up to 2x fast and would win
    # every comparison with the new ones, so they stay under the old key.
    timing: str = GPU_TIMING

    @property
    def key(self) -> str:
        return _digest(self.kind, asdict(self))

    @property
    def family(self) -> str:
        return _digest(f"{self.kind}-family", {"kind": self.kind, "arch": self.arch})

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "family": self.family, **asdict(self)}


def gpu_fingerprint(target: dict[str, Any]) -> GpuFingerprint:
    """The local GPU a CUDA target runs on: the first one of the target's arch."""
    from .errors import TunerError
    from .gpus import local_gpus

    gpus = local_gpus()
    arch = str(target.get("arch", ""))
    for gpu in gpus:
        if gpu.arch == arch:
            return GpuFingerprint(name=gpu.name, arch=gpu.arch, compute_capability=gpu.compute_capability)
    found = ", ".join(f"{g.name} ({g.arch})" for g in gpus) or "no NVIDIA GPU"
    raise TunerError(f"CUDA target for {arch or 'no arch'} needs a local GPU of that arch; this machine has {found}")


def fingerprint_for(target: dict[str, Any]) -> Fingerprint | GpuFingerprint:
    if target.get("kind") == "llvm":
        return cpu_fingerprint(target)
    if target.get("kind") == "cuda":
        return gpu_fingerprint(target)
    raise ValueError(f"no hardware fingerprint for target kind {target.get('kind')!r}")
