"""The NVIDIA GPUs of this machine, and the CUDA target MetaSchedule needs for one.

NVML (nvidia-ml-py) names the GPUs without initialising CUDA; TVM's device API gives the limits
MetaSchedule's CUDA rules read (threads and shared memory per block, warp size), which a
target without them makes it fail on ("missing attribute max_threads_per_block").
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

# Every CUDA GPU since compute capability 5.0 has these; used when TVM cannot ask the device.
DEFAULT_LIMITS = {
    "max_threads_per_block": 1024,
    "max_shared_memory_per_block": 49152,
    "thread_warp_size": 32,
    "registers_per_block": 65536,
}


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    major: int
    minor: int
    memory_bytes: int

    @property
    def arch(self) -> str:
        return f"sm_{self.major}{self.minor}"

    @property
    def compute_capability(self) -> str:
        return f"{self.major}.{self.minor}"


def _nvml_gpus() -> list[Gpu] | None:
    """None when NVML itself is missing (no driver); a list (maybe empty) otherwise."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total
            gpus.append(Gpu(index, name.decode() if isinstance(name, bytes) else str(name),
                            int(major), int(minor), int(memory)))
        return gpus
    finally:
        pynvml.nvmlShutdown()


def _tvm_gpus() -> list[Gpu]:
    """The same through TVM's CUDA runtime, where NVML is not installed."""
    import tvm

    gpus = []
    index = 0
    while tvm.cuda(index).exist:
        dev = tvm.cuda(index)
        major, minor = (int(x) for x in str(dev.compute_version).split("."))
        gpus.append(Gpu(index, str(dev.device_name), major, minor, int(dev.total_global_memory or 0)))
        index += 1
    return gpus


def _visible(gpus: list[Gpu], spec: str | None) -> list[Gpu] | None:
    """NVML lists every GPU; CUDA numbers only CUDA_VISIBLE_DEVICES, in its order.

    None when the variable names GPUs by UUID or MIG id: then only CUDA itself can tell.
    """
    if spec is None:
        return gpus
    picked = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if not item.isdigit():
            return None
        if int(item) >= len(gpus):
            break  # CUDA stops at the first invalid ordinal
        gpu = gpus[int(item)]
        picked.append(Gpu(len(picked), gpu.name, gpu.major, gpu.minor, gpu.memory_bytes))
    return picked


@lru_cache(maxsize=1)
def local_gpus() -> tuple[Gpu, ...]:
    """The GPUs this process can use, numbered as CUDA (and so TVM's ``tvm.cuda(i)``) numbers them."""
    found = _nvml_gpus()
    visible = None if found is None else _visible(found, os.environ.get("CUDA_VISIBLE_DEVICES"))
    return tuple(visible if visible is not None else _tvm_gpus())


def device_limits(index: int) -> dict[str, int]:
    """The per-block limits of a local GPU as TVM reads them, else the defaults of CUDA >= 5.0."""
    limits = dict(DEFAULT_LIMITS)
    try:
        import tvm

        dev = tvm.cuda(index)
        if dev.exist:
            limits["max_threads_per_block"] = int(dev.max_threads_per_block)
            limits["max_shared_memory_per_block"] = int(dev.max_shared_memory_per_block)
            limits["thread_warp_size"] = int(dev.warp_size)
    except Exception:  # no CUDA runtime in this TVM build: keep the defaults
        pass
    return limits


def cuda_target(arch: str, limits: dict[str, int], host: dict[str, Any]) -> dict[str, Any]:
    """A complete CUDA target dict: arch, the limits MetaSchedule needs, and the host CPU."""
    return {
        "kind": "cuda",
        "arch": arch,
        "max_num_threads": limits["max_threads_per_block"],
        **limits,
        "host": host,
    }
