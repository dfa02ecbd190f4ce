"""fp16 models: the residual stream and its layer norms in fp16, as ONNX Runtime's fp16 models run.

Relax's `ToMixedPrecision` computes an operator in fp16 only where all its inputs already are:
a transformer's first residual add takes the model's fp32 input, so the add runs in fp32, and
so does everything that follows the residual stream (layer norms, later residual adds). Every
matmul then reads a layer norm's output through its own cast from fp32 (the casts are kernels of
their own: FuseOps does not fuse producers into a matmul). On an H200 the fp16 transformer
layer ran 8 cast kernels (8.7 us of its 102 us of kernels) and 4 layer norms over fp32 data,
where ORT's fp16 model has one cast at the input and one at the output.

This pass, run after `ToMixedPrecision`, moves those fp32 operators to fp16 wherever each fp32
input is a cast from fp16, a constant, the function's own (fp32) input, or an operator moved
here, so casts happen once at the input and where an fp32 output is needed. Layer norms still
accumulate in fp32 (TOPI's layer_norm upcasts fp16 data inside the kernel); the residual stream
is rounded to fp16 between layers, as in ORT's fp16 model.
"""

from __future__ import annotations

import tvm
from tvm import relax
from tvm.ir import IRModule

from .relax_rewrites import mutate_functions

# Operators moved to fp16: elementwise arithmetic of the residual stream, and layer norm, whose
# TOPI kernel computes in fp32 from fp16 data.
MOVABLE = frozenset({"relax.add", "relax.subtract", "relax.multiply", "relax.nn.layer_norm"})
_ASTYPE = tvm.ir.Op.get("relax.astype")


def _dtype(expr: relax.Expr) -> str | None:
    ty = expr.ty
    return ty.dtype if isinstance(ty, relax.TensorType) else None


@relax.expr_functor.mutator
class _Rewriter(relax.PyExprMutator):
    def __init__(self, mod: IRModule) -> None:
        super().__init__(mod)
        # An fp32 variable -> an fp16 variable holding its value (rounded to fp16).
        self.half: dict[relax.Var, relax.Expr] = {}
        self.params: set[relax.Var] = set()
        self.moved = 0

    def visit_function_(self, func: relax.Function) -> relax.Expr:
        self.params = set(func.params)
        self.half = {}
        return super().visit_function_(func)

    def _as_half(self, arg: relax.Expr) -> relax.Expr | None:
        """`arg` (fp32) as an fp16 expression, or None where it is not free to have one."""
        if isinstance(arg, tvm.ir.expr.GenericConst):
            return relax.op.astype(arg, "float16")  # folded at compile time
        if isinstance(arg, relax.Var):
            if arg in self.half:
                return self.half[arg]
            if arg in self.params:
                # The model's fp32 input: rounded once, as the matmuls that read it already are.
                self.half[arg] = self.builder_.emit(relax.op.astype(arg, "float16"))
                return self.half[arg]
        return None

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        value = self.visit_expr(binding.value)
        var = binding.var
        if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
            name = value.op.name
            if value.op.same_as(_ASTYPE):
                source = value.args[0]
                target = str(value.attrs.dtype)
                if target == "float32" and _dtype(source) == "float16":
                    # An exact widening: its fp16 source stands for it.
                    self.half[var] = source
                elif target == "float16" and isinstance(source, relax.Var) and source in self.half:
                    # Narrowing a value that already has an fp16 twin: the twin is that value.
                    self.builder_.emit_normalized(relax.VarBinding(var, self.half[source]))
                    return
                elif target == "float16" and isinstance(source, relax.Var) and source in self.params:
                    # The first cast of the model's input is its twin: one cast kernel, not one
                    # per reader (ToMixedPrecision casts it again for every matmul).
                    self.half[source] = var
            elif name in MOVABLE and _dtype(var) == "float32":
                moved = self._moved(value)
                if moved is not None:
                    half = self.builder_.emit(moved)
                    self.half[var] = half
                    self.moved += 1
                    self.builder_.emit_normalized(relax.VarBinding(var, self.builder_.normalize(relax.op.astype(half, "float32"))))
                    return
        self.builder_.emit_normalized(relax.VarBinding(var, value))

    def _moved(self, call: relax.Call) -> relax.Call | None:
        """`call` with its fp32 tensor inputs in fp16, when every one of them can be."""
        args = []
        for arg in call.args:
            if _dtype(arg) != "float32":
                args.append(arg)
                continue
            half = self._as_half(arg)
            if half is None:
                return None
            args.append(half)
        return relax.Call(call.op, args, call.attrs, call.ty_args)


def rewrite(mod: IRModule) -> tuple[IRModule, int]:
    """`mod` with its fp32 residual operators in fp16, and how many were moved. The fp32 casts
    nothing reads any more are left to dead-code elimination."""
    rewriter = _Rewriter(mod)
    return mutate_functions(mod, rewriter), rewriter.moved


@tvm.transform.module_pass(opt_level=0, name="tuner.HalfResiduals")
def half_residuals(mod: IRModule, _ctx: tvm.transform.PassContext) -> IRModule:
    """The module pass of `rewrite` (fp16 imports, after `ToMixedPrecision`)."""
    return rewrite(mod)[0]
