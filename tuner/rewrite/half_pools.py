"""fp16 models: average pools sum in fp32.

TOPI's average pools accumulate in their data's type. Relax's `ToMixedPrecision` keeps `mean` in
fp32 but lets `avg_pool2d` follow its fp16 input, so resnet50's final 7x7 average (He-initialized
weights: values up to ~2700, a window sum of ~96000) overflowed fp16's 65504 into inf and every
output of the fp16 module was NaN, though each value and their average fit in fp16. ONNX Runtime
(cuDNN) accumulates pools in fp32; so does this: the pool reads its fp16 input widened to fp32 and
its output is narrowed back, both casts fusing into the pool's kernel (no extra pass over memory).
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.ir import IRModule

from .relax_rewrites import rewrite_calls

AVERAGE_POOLS = frozenset({
    "relax.nn.avg_pool1d", "relax.nn.avg_pool2d", "relax.nn.avg_pool3d",
    "relax.nn.adaptive_avg_pool1d", "relax.nn.adaptive_avg_pool2d", "relax.nn.adaptive_avg_pool3d",
})


def _fp32_pool(builder: relax.BlockBuilder, call: relax.Call) -> relax.Expr | None:
    if not isinstance(call.op, tvm.ir.Op) or call.op.name not in AVERAGE_POOLS:
        return None
    data = call.args[0]
    if not isinstance(data.ty, relax.TensorType) or data.ty.dtype != "float16":
        return None
    wide = builder.emit(relax.op.astype(data, "float32"))
    pooled = builder.emit(relax.Call(call.op, [wide, *call.args[1:]], call.attrs, call.ty_args))
    return relax.op.astype(pooled, "float16")


def rewrite(mod: IRModule) -> tuple[IRModule, int]:
    """`mod` with its fp16 average pools summing in fp32, and how many there were."""
    return rewrite_calls(mod, _fp32_pool)


@tvm.transform.module_pass(opt_level=0, name="tuner.HalfPools")
def half_pools(mod: IRModule, _ctx: tvm.transform.PassContext) -> IRModule:
    """The module pass of `rewrite` (fp16 imports, after `ToMixedPrecision`)."""
    return rewrite(mod)[0]
