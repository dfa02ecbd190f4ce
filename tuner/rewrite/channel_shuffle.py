"""ShuffleNet's channel shuffle as one channels-last gather.

ONNX writes a channel shuffle in NCHW: reshape to (N, g, C/g, H, W), swap the two channel axes,
reshape back. `channels_last` cannot convert reshapes, so it leaves a transpose to NCHW before
each shuffle and one back after: five layout operators fused into one kernel that reads every
element through nested divisions and modulos of its flattened index. In NHWC the shuffle only
permutes each pixel's channels, ``out[n, h, w, c] = x[n, h, w, (c % g) * C/g + c // g]``, and is
written so here: 0.108 -> 0.052 ms for shufflenet's 28x28x136 shuffle alone (a copy of that
tensor takes 0.026), and its 16 shuffles 1.13 -> 0.33 ms inside the model (default schedules,
AMD EPYC znver3, `bench/module_profile.py zoo:shufflenet`). The same shuffle as NHWC reshape,
transpose, reshape was no faster than the original (0.113 ms): the reshapes bring the
divisions back.
"""

from __future__ import annotations

import tvm
from tvm import relax, te
from tvm.ir import IRModule

from .relax_rewrites import mutate_functions, static_shape

_PERMUTE_DIMS = tvm.ir.Op.get("relax.permute_dims")
_RESHAPE = tvm.ir.Op.get("relax.reshape")


def shuffle_nhwc(data: te.Tensor, groups: int) -> te.Tensor:
    """The channel shuffle of ``groups`` groups of an NHWC tensor."""
    per_group = int(data.shape[3]) // groups
    return te.compute(data.shape, lambda n, h, w, c: data[n, h, w, (c % groups) * per_group + c // groups],
                      name="channel_shuffle")


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: IRModule) -> None:
        super().__init__(mod)
        self.rewritten = 0

    def _producer(self, expr: relax.Expr, op: tvm.ir.Op) -> relax.Call | None:
        """The call of `op` that `expr` (a variable of the dataflow block) is bound to."""
        if isinstance(expr, relax.Var):
            expr = self.lookup_binding(expr)
        if isinstance(expr, relax.Call) and isinstance(expr.op, tvm.ir.Op) and expr.op.same_as(op):
            return expr
        return None

    def _groups(self, call: relax.Call) -> tuple[relax.Expr, int] | None:
        """(NHWC input, groups) when `call` ends an NCHW channel shuffle wrapped in layout
        transposes: permute_dims(reshape(permute_dims(reshape(permute_dims(x)))))."""
        if not (isinstance(call.op, tvm.ir.Op) and call.op.same_as(_PERMUTE_DIMS)):
            return None
        chain = [call]
        for op in (_RESHAPE, _PERMUTE_DIMS, _RESHAPE, _PERMUTE_DIMS):
            producer = self._producer(chain[-1].args[0], op)
            if producer is None:
                return None
            chain.append(producer)
        to_nhwc, merge, swap, split, to_nchw = chain
        axes = [None if c.attrs.axes is None else [int(a) for a in c.attrs.axes] for c in (to_nchw, swap, to_nhwc)]
        if axes != [[0, 3, 1, 2], [0, 2, 1, 3, 4], [0, 2, 3, 1]]:
            return None
        data = to_nchw.args[0]
        shape, split_shape, merged = static_shape(data), static_shape(split), static_shape(merge)
        if shape is None or split_shape is None or merged is None or len(shape) != 4 or len(split_shape) != 5:
            return None
        n, h, w, c = shape
        groups = split_shape[1]
        if split_shape != [n, groups, c // groups, h, w] or groups * (c // groups) != c or merged != [n, c, h, w]:
            return None
        return data, groups

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        found = self._groups(call) if isinstance(call, relax.Call) else None
        if found is None:
            return call
        self.rewritten += 1
        data, groups = found
        return self.builder_.call_te(shuffle_nhwc, data, groups, primfunc_name_hint="channel_shuffle")


def rewrite(mod: IRModule) -> tuple[IRModule, int]:
    """`mod` with its channel shuffles channels-last, and how many there were. The transposes
    they no longer use are left to dead-code elimination."""
    rewriter = _Rewriter(mod)
    return mutate_functions(mod, rewriter), rewriter.rewritten


@tvm.transform.module_pass(opt_level=0, name="tuner.ChannelShuffleNHWC")
def channel_shuffles_nhwc(mod: IRModule, _ctx: tvm.transform.PassContext) -> IRModule:
    """The module pass of `rewrite` (CPU only: it runs after `graph.channels_last`)."""
    return rewrite(mod)[0]
