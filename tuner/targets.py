"""Turn the user's ``--target`` into a TVM target dict."""

from __future__ import annotations

import json
from typing import Any

import psutil

from .errors import TunerError


def host_cpu_target() -> dict[str, Any]:
    """The host CPU as LLVM sees it, using every physical core (hyper-threads hurt measurements)."""
    from tvm.target import codegen

    cores = psutil.cpu_count(logical=False) or psutil.cpu_count() or 1
    return {"kind": "llvm", "mcpu": str(codegen.llvm_get_system_cpu()), "num-cores": int(cores)}


def parse_target(spec: str) -> dict[str, Any]:
    """``cpu`` or a JSON dict such as ``{"kind": "llvm", "num-cores": 2}``."""
    text = spec.strip()
    if text == "cpu":
        return host_cpu_target()
    if text == "cuda":
        raise TunerError("target 'cuda' is not supported yet: GPU tuning is planned; use --target cpu")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TunerError(f"invalid target {spec!r}: expected 'cpu' or a JSON dict ({exc.msg})") from None
    if not isinstance(value, dict) or not isinstance(value.get("kind"), str):
        raise TunerError(f'invalid target {spec!r}: a JSON dict with a "kind" key is expected')
    if value["kind"] == "cuda":
        raise TunerError("CUDA targets are not supported yet: GPU tuning is planned; use an llvm target")
    if value["kind"] != "llvm":
        raise TunerError(f"unsupported target kind {value['kind']!r}: only 'llvm' (CPU) is supported")
    validate_target(value)
    return value


def validate_target(target: dict[str, Any]) -> None:
    """Let TVM reject bad keys now, with a readable message, instead of deep in compilation."""
    from tvm.target import Target

    try:
        Target(dict(target))
    except Exception as exc:  # TVM raises several error types for bad attributes
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise TunerError(f"invalid target {json.dumps(target)}: {first}") from None
