"""Batch norms after a biased convolution: the bias moves into the norm's running mean.

Relax's `FoldBatchnormToConv2D` folds `batch_norm(conv2d(x, W))` into the convolution's weights
and bias, but not `batch_norm(add(conv2d(x, W), b))`, which ONNX exports give for a Conv with a
bias followed by BatchNormalization (shufflenet's first convolution). That norm was then
decomposed into four elementwise ops after the convolution, and the ReLU behind them ran as a
kernel of its own (0.19 ms, ~6% of shufflenet on 2 AVX-512 cores). Since
BN(x + b; mean) = BN(x; mean - b), the norm can read the convolution directly with its mean
shifted by the bias, and the fold applies.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax
from tvm.ir import IRModule
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

from .relax_rewrites import static_shape


def _pattern() -> tuple[relax.dpl.DFPattern, dict[str, relax.dpl.DFPattern]]:
    parts = {name: is_const() for name in ("bias", "gamma", "beta", "mean", "var")}
    parts["conv"] = is_op("relax.nn.conv2d")(wildcard(), is_const())
    biased = is_op("relax.add")(parts["conv"], parts["bias"])
    norm = is_op("relax.nn.batch_norm")(biased, parts["gamma"], parts["beta"], parts["mean"], parts["var"])
    return norm, parts


def _channel_bias(bias: relax.Constant, channels: int, rank: int, axis: int) -> np.ndarray | None:
    """The bias as one value per channel, when it broadcasts along `axis` only."""
    shape = static_shape(bias)
    if shape is None or len(shape) > rank:
        return None
    full = [1] * (rank - len(shape)) + shape
    if any(d != 1 for i, d in enumerate(full) if i != axis) or full[axis] not in (1, channels):
        return None
    return np.broadcast_to(bias.value.numpy().reshape(-1), (channels,))


def _unbias(mod: IRModule) -> IRModule:
    norm, parts = _pattern()

    def rewriter(call: relax.Call, matched: dict) -> relax.Expr:
        conv = matched[parts["conv"]]
        shape = static_shape(conv)
        if shape is None or call.attrs.axis not in (1, -3) or len(shape) != 4 or conv.attrs.out_layout != "NCHW":
            return call
        mean = matched[parts["mean"]].value.numpy()
        bias = _channel_bias(matched[parts["bias"]], shape[1], 4, 1)
        if bias is None or bias.dtype != mean.dtype:
            return call
        shifted = relax.const(mean - bias)
        args = [conv, matched[parts["gamma"]], matched[parts["beta"]], shifted, matched[parts["var"]]]
        return relax.Call(call.op, args, call.attrs, call.ty_args)

    out = mod.clone()
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            out.update_func(gv, rewrite_call(norm, rewriter, func))
    return out


@tvm.transform.module_pass(opt_level=0, name="tuner.ConvBiasNorms")
def conv_bias_norms(mod: IRModule, _ctx: tvm.transform.PassContext) -> IRModule:
    """Batch norms of biased convolutions read the convolution, their mean less the bias (before
    `FoldBatchnormToConv2D`)."""
    return _unbias(mod)
