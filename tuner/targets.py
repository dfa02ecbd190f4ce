"""Turn the user's ``--target`` into a TVM target dict."""

from __future__ import annotations

import json
import re
from typing import Any

import psutil

from .errors import TunerError
from .gpus import DEFAULT_LIMITS, cuda_target, device_limits, local_gpus
from .stages import last_line


def host_cpu_target() -> dict[str, Any]:
    """The host CPU as LLVM sees it, using every physical core (hyper-threads hurt measurements)."""
    from .hardware import llvm_host_cpu

    cores = psutil.cpu_count(logical=False) or psutil.cpu_count() or 1
    return {"kind": "llvm", "mcpu": llvm_host_cpu(), "num-cores": int(cores)}


def local_cuda_target() -> dict[str, Any]:
    """The first GPU CUDA numbers (pick another with CUDA_VISIBLE_DEVICES)."""
    gpus = local_gpus()
    if not gpus:
        raise TunerError("--target cuda: no NVIDIA GPU found on this machine (NVML and the CUDA runtime see none)")
    return cuda_target(gpus[0].arch, device_limits(gpus[0].index), host_cpu_target())


def complete_cuda_target(target: dict[str, Any]) -> dict[str, Any]:
    """A user's CUDA dict with what MetaSchedule needs filled in: the local GPU's arch and limits
    where the user gave none, the host CPU as the host. The user's own values win."""
    given = dict(target)
    gpus = local_gpus()
    arch = given.get("arch") or (gpus[0].arch if gpus else None)
    if not arch:
        raise TunerError('a CUDA target needs "arch" (e.g. "sm_90") when this machine has no GPU')
    match = next((g for g in gpus if g.arch == arch), None)
    full = cuda_target(str(arch), device_limits(match.index) if match else dict(DEFAULT_LIMITS), host_cpu_target())
    full.update(given)
    full["arch"] = arch
    return full


def parse_target(spec: str) -> dict[str, Any]:
    """``cpu`` or a JSON dict such as ``{"kind": "llvm", "num-cores": 2}``."""
    text = spec.strip()
    if text == "cpu":
        return host_cpu_target()
    if text == "cuda":
        return local_cuda_target()
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TunerError(f"invalid target {spec!r}: expected 'cpu' or a JSON dict ({exc.msg})") from None
    if not isinstance(value, dict) or not isinstance(value.get("kind"), str):
        raise TunerError(f'invalid target {spec!r}: a JSON dict with a "kind" key is expected')
    if value["kind"] == "cuda":
        _check_arch(value.get("arch"))
        value = complete_cuda_target(value)
    elif value["kind"] == "llvm":
        value = complete_cpu_target(value)
    else:
        raise TunerError(f"unsupported target kind {value['kind']!r}: 'llvm' (CPU) and 'cuda' are supported")
    validate_target(value)
    return value


def complete_cpu_target(target: dict[str, Any]) -> dict[str, Any]:
    """A user's CPU dict with what tuning needs filled in from the host: `num-cores` (MetaSchedule
    reads it; without it a run ended in "Target does not have attribute num-cores") and, unless
    it cross-compiles (`mtriple`), `mcpu`. The user's values win; an `mcpu` LLVM does not know
    is refused with the list of those it does (LLVM only warns and builds generic code)."""
    from tvm.target import Target, codegen

    given = dict(target)
    mcpu = given.get("mcpu")
    if mcpu is not None:
        known = sorted(set(codegen.llvm_get_cpu_archlist(Target({"kind": "llvm", **{
            k: v for k, v in given.items() if k == "mtriple"}}))))
        if not isinstance(mcpu, str) or mcpu not in known:
            raise TunerError(f"unknown mcpu {mcpu!r} for LLVM; known: {', '.join(known)}")
    host = host_cpu_target()
    if "num-cores" not in given:
        given["num-cores"] = host["num-cores"]
    if "mcpu" not in given and "mtriple" not in given:
        given["mcpu"] = host["mcpu"]
    return given


def _check_arch(arch: object) -> None:
    if arch is not None and not (isinstance(arch, str) and re.fullmatch(r"sm_[1-9][0-9]{1,2}[af]?", arch)):
        raise TunerError(f"unknown CUDA arch {arch!r}: expected sm_XY, e.g. sm_80 (A100), sm_89 (L4), sm_90 (H100, H200)")


def validate_target(target: dict[str, Any]) -> None:
    """Let TVM reject bad keys now, with a readable message, instead of deep in compilation."""
    from tvm.target import Target

    try:
        Target(dict(target))
    except Exception as exc:  # TVM raises several error types for bad attributes
        raise TunerError(f"invalid target {json.dumps(target)}: {last_line(exc) or type(exc).__name__}") from None
