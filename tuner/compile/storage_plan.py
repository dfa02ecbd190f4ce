"""Which activation buffers a CPU module's kernels share, for cores that share no L3.

TVM's memory plan (`StaticPlanBlockMemory`) lets tensors whose lifetimes do not overlap share a
storage block, of any size within 16x of each other: squeezenet's 34 kernels write their
outputs into 7 blocks (6.7 MB). TVM's thread pool hands thread t the t-th contiguous chunk of
each kernel's parallel loop, so every kernel's thread t writes and reads roughly the t-th part
of its tensors; a block that holds a 1.8 MB tensor, then a 0.2 MB one, then a 0.8 MB one, moves
its cache lines from one core to the other at each new tenant. Between cores that share an L3
that costs little; between cores that do not (an EPYC's CCXs, a VM whose vCPUs the host placed
on two of them) every such line is a cross-die transfer: a cache line's round trip 330-350 ns
against 55-81 ns (`bench/core_latency.py`), an elementwise kernel reading what the other core
wrote 4x slower. squeezenet's module ran 2.1x slower there (6.2 ms against 3.0), ONNX Runtime
1.5x.

``per-shape`` lets a block hold tensors of one shape and dtype only: they are written by the
same kernels' partitions, so each line stays with the core that uses it, inference after
inference. squeezenet on default schedules, by turns (`bench/results/storage-plan-squeezenet-
znver4.json`): 0.73x the time on cores without a shared L3, 1.06x on cores with one (its blocks:
7 -> 32, 6.7 -> 19.6 MB); tuned at 16 trials per task 0.82x and 1.10x; resnet50 0.93x and 1.06x
(9.3 -> 41.8 MB). ``auto`` (the default) takes it where the
module's threads may run on cores of more than one L3, as the host's kernel reports them (this
project's 2-core VMs report one L3 whichever cores the host gives them, so they keep `reuse`).

``per-size`` (ratio `compile.size_ratio`, 1.5 unless set) is the middle: tenants of a planned
block keep sharing it where their sizes are within the ratio (split alike, thread t of each
writes about the same part of the block, so at most (ratio - 1) / 2 of a tenant's lines move),
and only the others get blocks of their own: squeezenet 18 blocks, 15.8 MB at 1.5 (per-shape 32,
20.5 MB; TVM's plan 7, 7.0 MB). On AMD EPYC znver3 VMs (2026-12-07, a slow, contended host),
by turns against `reuse` on two L3s / one: squeezenet tuned at 64 trials per task 0.938 / 0.947
(per-shape 1.003 / 0.999 there), default modules squeezenet 0.921 / 1.012, shufflenet 0.981 /
0.895 (2 rounds), transformer 0.996 / 1.029, resnet50 1.025 / 1.037
(`bench/results/storage-plan-*-session40.json`): not a default.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import tvm
from tvm import relax
from tvm.ir import IRModule

StoragePlan = Literal["auto", "reuse", "per-shape", "per-size"]

_ALLOC_STORAGE = tvm.ir.Op.get("relax.memory.alloc_storage")
_ALLOC_TENSOR = tvm.ir.Op.get("relax.memory.alloc_tensor")
SYSFS_CPUS = Path("/sys/devices/system/cpu")


def _call_of(binding: relax.Binding, op: tvm.ir.Op) -> relax.Call | None:
    value = binding.value if isinstance(binding, relax.VarBinding) else None
    return value if isinstance(value, relax.Call) and value.op.same_as(op) else None


def _tensor_key(call: relax.Call) -> tuple[tuple[int, ...], str] | None:
    """A planned tensor's static shape and dtype, if it sits at the start of its block."""
    offset, shape, dtype = call.args[1], call.args[2], call.args[3]
    if not isinstance(offset, tvm.tirx.IntImm) or int(offset) != 0 or not isinstance(shape, relax.ShapeExpr):
        return None
    if not all(isinstance(d, tvm.tirx.IntImm) for d in shape.values):
        return None
    return tuple(int(d) for d in shape.values), str(dtype.value)


def _nbytes(key: tuple[tuple[int, ...], str]) -> int:
    shape, dtype = key
    return math.prod(shape) * tvm.runtime.DataType(dtype).bits // 8


# Which tenants of one planned block may keep sharing storage: the representative key of a class
# (its first tenant's) and a newcomer's key.
SameClass = Callable[[tuple, tuple], bool]


def same_shape(first: tuple, key: tuple) -> bool:
    return first == key


def within_ratio(ratio: float) -> SameClass:
    """Tenants whose sizes are within `ratio` of the class's first one: rows split alike, thread t
    of each writes about the same t-th part of the block, so at most (ratio - 1) / 2 of a
    tenant's lines move to the other core, while most of TVM's reuse (lines still in the core's
    L2 from the tenant before) stays."""
    def same(first: tuple, key: tuple) -> bool:
        a, b = _nbytes(first), _nbytes(key)
        return max(a, b) <= ratio * min(a, b)
    return same


def _classes(func: relax.Function, same: SameClass) -> tuple[dict[relax.Var, int], dict[tuple[relax.Var, int], int]]:
    """Each planned tensor's class within its block (0: it stays in the planned block) and the
    bytes each new class's block needs (its largest tenant), tenants taken in program order."""
    storages: set[relax.Var] = set()
    reps: dict[relax.Var, list[tuple]] = {}
    tenant_class: dict[relax.Var, int] = {}
    class_bytes: dict[tuple[relax.Var, int], int] = {}
    for block in func.body.blocks:
        for binding in block.bindings:
            if _call_of(binding, _ALLOC_STORAGE) is not None:
                storages.add(binding.var)
            elif (tensor := _call_of(binding, _ALLOC_TENSOR)) is not None and tensor.args[0] in storages:
                storage, key = tensor.args[0], _tensor_key(tensor)
                if key is None:
                    continue
                classes = reps.setdefault(storage, [])
                cls = next((i for i, rep in enumerate(classes) if same(rep, key)), None)
                if cls is None:
                    cls = len(classes)
                    classes.append(key)
                tenant_class[binding.var] = cls
                if cls:
                    class_bytes[(storage, cls)] = max(class_bytes.get((storage, cls), 0), _nbytes(key))
    return tenant_class, class_bytes


def split_blocks(func: relax.Function, same: SameClass) -> relax.Function:
    """A new storage block for every class of tenants a planned block held beyond its first
    class. Blocks only split, never merge, so no two tensors alive at once can come to share one."""
    tenant_class, class_bytes = _classes(func, same)
    if not class_bytes:
        return func
    storages: dict[relax.Var, relax.Call] = {}
    split: dict[tuple[relax.Var, int], relax.Var] = {}
    blocks = []
    for block in func.body.blocks:
        bindings: list[relax.Binding] = []
        for binding in block.bindings:
            if (storage_call := _call_of(binding, _ALLOC_STORAGE)) is not None:
                storages[binding.var] = storage_call
            elif tenant_class.get(binding.var):
                tensor = _call_of(binding, _ALLOC_TENSOR)
                storage = tensor.args[0]
                cls = (storage, tenant_class[binding.var])
                own = split.get(cls)
                if own is None:
                    base = storages[storage]
                    own = relax.Var(f"{storage}_{len(split)}", storage.ty)
                    bindings.append(relax.VarBinding(own, relax.Call(
                        base.op, [relax.ShapeExpr([class_bytes[cls]]), *base.args[1:]], base.attrs, base.ty_args)))
                    split[cls] = own
                binding = relax.VarBinding(binding.var, relax.Call(
                    tensor.op, [own, *tensor.args[1:]], tensor.attrs, tensor.ty_args))
            bindings.append(binding)
        kind = relax.DataflowBlock if isinstance(block, relax.DataflowBlock) else relax.BindingBlock
        blocks.append(kind(bindings))
    return relax.Function(func.params, relax.SeqExpr(blocks, func.body.body), func.ret_ty, func.is_pure,
                          func.attrs, func.span)


def _split_pass(name: str, same: SameClass) -> tvm.transform.Pass:
    @tvm.transform.module_pass(opt_level=0, name=name)
    def split(mod: IRModule, _ctx: tvm.transform.PassContext) -> IRModule:
        out = mod
        for gv, func in mod.functions.items():
            if isinstance(func, relax.Function):
                out[gv] = split_blocks(func, same)
        return out
    return split


# After `StaticPlanBlockMemory`: each storage block holds tensors of one shape.
storage_per_shape = _split_pass("StoragePerShape", same_shape)


def storage_per_size(ratio: float) -> tvm.transform.Pass:
    """After `StaticPlanBlockMemory`: each storage block holds tensors within `ratio` in size."""
    return _split_pass("StoragePerSize", within_ratio(ratio))


def l3_domains(cpus: list[int], sysfs: Path = SYSFS_CPUS) -> int:
    """How many distinct L3 caches serve `cpus`, as the kernel reports them (1 where it says
    nothing: then nothing says the cores are apart)."""
    domains = set()
    for cpu in cpus:
        for index in sorted((sysfs / f"cpu{cpu}" / "cache").glob("index*")):
            try:
                if (index / "level").read_text().strip() == "3":
                    domains.add((index / "shared_cpu_list").read_text().strip())
            except OSError:
                continue
    return max(1, len(domains))


def allowed_cpus() -> list[int]:
    """The CPUs this process, and so TVM's thread pool (`cluster/threads.use_threads`), may run on."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def resolve(plan: StoragePlan, threads: int, size_ratio: float = 1.5,
            sysfs: Path = SYSFS_CPUS) -> str:
    """The plan a module is lowered with (`lowering_pass` reads it back): `auto` is per-shape
    where a module's threads may run on cores of more than one L3; `per-size` carries its ratio."""
    if plan == "auto":
        plan = "per-shape" if threads > 1 and l3_domains(allowed_cpus(), sysfs) > 1 else "reuse"
    return f"per-size-{size_ratio:g}" if plan == "per-size" else plan


def lowering_pass(storage: str) -> tvm.transform.Pass | None:
    """The pass that follows TVM's memory plan for a resolved plan (None: TVM's plan as it is)."""
    if storage == "reuse":
        return None
    if storage == "per-shape":
        return storage_per_shape
    if storage.startswith("per-size-"):
        return storage_per_size(float(storage.removeprefix("per-size-")))
    raise ValueError(f"unknown storage plan {storage!r}")
