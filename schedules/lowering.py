"""How scheduled kernels are lowered: the pass configuration a scheduled module needs.

Kept free of MetaSchedule imports: build workers call it for every candidate.

TVM 0.27's StorageRewrite lets a tensor-core kernel's fp32 accumulator staging buffer reuse the
storage of its fp16 input tiles; LowerIntrin then rejects the wmma store's pointer into it
("tvm_access_ptr element type must match the source buffer (float16 vs. float32)"). So every
fp16 kernel that accumulates in fp32 on tensor cores failed to build: on an H100 every such
candidate of the search did, and `--precision fp16` ran on CUDA cores only. Without storage
rewrite they build (the generated CUDA code uses wmma). Only modules that hold tensor-core
intrinsics are lowered so; every other kernel keeps TVM's default lowering.
"""

from __future__ import annotations

from typing import Any

import tvm
from tvm.ir import IRModule

# The builtins of tensor-core (wmma) fragments, as they appear in a scheduled module.
TENSOR_CORE_BUILTINS = ("tvm_load_matrix_sync", "tvm_store_matrix_sync", "tvm_mma_sync", "tvm_fill_fragment")


def uses_tensor_cores(mod_json: str) -> bool:
    """Whether a scheduled module (as TVM JSON) calls tensor-core fragment builtins."""
    return any(name in mod_json for name in TENSOR_CORE_BUILTINS)


def lowering_config(mod: IRModule | str) -> dict[str, Any]:
    """PassContext config for lowering `mod`: a TIR or Relax IRModule (its kernels are read,
    not its weights), or a TIR module's TVM JSON."""
    if isinstance(mod, str):
        found = uses_tensor_cores(mod)
    else:
        found = any(uses_tensor_cores(tvm.ir.save_json(f)) for f in mod.functions.values()
                    if isinstance(f, tvm.tirx.PrimFunc))
    return {"tirx.disable_storage_rewrite": True} if found else {}
