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
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal

import tvm
from tvm import relax
from tvm.ir import IRModule

StoragePlan = Literal["auto", "reuse", "per-shape"]

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


def _per_shape(func: relax.Function) -> relax.Function:
    """A new storage block for every shape a planned block held beyond its first one. Blocks only
    split, never merge, so no two tensors alive at once can come to share one."""
    storages: dict[relax.Var, relax.Call] = {}
    first_key: dict[relax.Var, tuple] = {}
    split: dict[tuple, relax.Var] = {}
    blocks = []
    for block in func.body.blocks:
        bindings: list[relax.Binding] = []
        for binding in block.bindings:
            if (storage_call := _call_of(binding, _ALLOC_STORAGE)) is not None:
                storages[binding.var] = storage_call
            elif (tensor := _call_of(binding, _ALLOC_TENSOR)) is not None and tensor.args[0] in storages:
                storage, key = tensor.args[0], _tensor_key(tensor)
                if key is not None and first_key.setdefault(storage, key) != key:
                    own = split.get((storage, key))
                    if own is None:
                        shape, dtype = key
                        nbytes = math.prod(shape) * tvm.runtime.DataType(dtype).bits // 8
                        base = storages[storage]
                        own = relax.Var(f"{storage}_{len(split)}", storage.ty)
                        bindings.append(relax.VarBinding(own, relax.Call(
                            base.op, [relax.ShapeExpr([nbytes]), *base.args[1:]], base.attrs, base.ty_args)))
                        split[(storage, key)] = own
                    binding = relax.VarBinding(binding.var, relax.Call(
                        tensor.op, [own, *tensor.args[1:]], tensor.attrs, tensor.ty_args))
            bindings.append(binding)
        kind = relax.DataflowBlock if isinstance(block, relax.DataflowBlock) else relax.BindingBlock
        blocks.append(kind(bindings))
    if not split:
        return func
    return relax.Function(func.params, relax.SeqExpr(blocks, func.body.body), func.ret_ty, func.is_pure,
                          func.attrs, func.span)


@tvm.transform.module_pass(opt_level=0, name="StoragePerShape")
def storage_per_shape(mod: IRModule, _ctx: tvm.transform.PassContext) -> IRModule:
    """After `StaticPlanBlockMemory`: each storage block holds tensors of one shape."""
    out = mod
    for gv, func in mod.functions.items():
        if isinstance(func, relax.Function):
            out[gv] = _per_shape(func)
    return out


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


def resolve(plan: StoragePlan, threads: int, sysfs: Path = SYSFS_CPUS) -> Literal["reuse", "per-shape"]:
    """`auto`: per-shape where a module's threads may run on cores of more than one L3."""
    if plan != "auto":
        return plan
    return "per-shape" if threads > 1 and l3_domains(allowed_cpus(), sysfs) > 1 else "reuse"
