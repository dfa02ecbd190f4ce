"""What the CPU graph rewrites (`winograd`, `channel_shuffle`, `group_padding`) share: reading a
tensor's static shape, and running an expression mutator over every Relax function of a module."""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.ir import IRModule


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
