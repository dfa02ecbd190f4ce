"""What the graph rewrites (`winograd`, `split_k`, `channel_shuffle`, `group_padding`, `row_padding`,
`half_pools`, `conv_bias_norms`) share: reading a tensor's static shape, running an expression mutator over
every Relax function of a module, counting the kernels a rewrite made."""

from __future__ import annotations

from collections.abc import Callable

import tvm
from tvm import relax
from tvm.ir import IRModule

_CONV2D = tvm.ir.Op.get("relax.nn.conv2d")


def static_shape(expr: relax.Expr) -> list[int] | None:
    """The tensor's shape when every dimension is a constant, else None."""
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or not isinstance(ty.shape, relax.ShapeExpr):
        return None
    dims = ty.shape.values
    if dims is None or not all(isinstance(d, tvm.tirx.IntImm) for d in dims):
        return None
    return [int(d) for d in dims]


def mutate_functions(mod: IRModule, mutator: relax.PyExprMutator) -> IRModule:
    """`mod` with every Relax function visited by `mutator` (built on `mod`); the TIR functions it
    emitted (call_te) are in the module returned."""
    for gv, func in mod.functions_items():
        if isinstance(func, relax.Function):
            mutator.builder_.update_func(gv, mutator.visit_expr(func))
    return mutator.builder_.get()


def nhwc_conv2d(call: relax.Call) -> bool:
    """Whether `call` is a conv2d with NHWC data, OHWI weights and NHWC output (what the CPU
    rewrites after `graph.channels_last` work on)."""
    if not isinstance(call.op, tvm.ir.Op) or not call.op.same_as(_CONV2D):
        return False
    attrs = call.attrs
    return (attrs.data_layout, attrs.kernel_layout, attrs.out_layout) == ("NHWC", "OHWI", "NHWC")


@relax.expr_functor.mutator
class CallRewriter(relax.PyExprMutator):
    """Visits every call after its arguments; `replace(builder, call)` returns the expression that
    stands for it (emitting what it needs), or None to keep it. `rewritten` counts replacements."""

    def __init__(self, mod: IRModule, replace: Callable[[relax.BlockBuilder, relax.Call], relax.Expr | None]) -> None:
        super().__init__(mod)
        self.replace = replace
        self.rewritten = 0

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not isinstance(call, relax.Call) or (new := self.replace(self.builder_, call)) is None:
            return call
        self.rewritten += 1
        return new


def rewrite_calls(mod: IRModule, replace: Callable[[relax.BlockBuilder, relax.Call], relax.Expr | None]) -> tuple[IRModule, int]:
    """`mod` with every call that `replace` replaces replaced, and how many there were."""
    rewriter = CallRewriter(mod, replace)
    return mutate_functions(mod, rewriter), rewriter.rewritten


def count_kernels(mod: IRModule, name_part: str) -> int:
    """How many TIR kernels of a fused module have `name_part` in their name (what a rewrite
    made of its convolutions, for the report)."""
    return sum(1 for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc) and name_part in gv.name_hint)
