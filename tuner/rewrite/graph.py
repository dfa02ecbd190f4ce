"""ONNX to Relax, and the graph-level passes shared by task extraction and compilation.

Task extraction and compilation must see identical fused kernels, or database keys would not
match: both go through `fuse_for_tuning`.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import re

import onnx
import tvm
from tvm import relax
from tvm.ir import IRModule
from tvm.relax import pipeline as relax_pipeline
from tvm.target import Target

from .channel_shuffle import channel_shuffles_nhwc
from .conv_bias_norms import conv_bias_norms
from ..errors import TunerError
from .group_padding import pad_groups
from .half_pools import half_pools
from .half_residuals import half_residuals
from ..load.model_io import LoadedModel
from .row_padding import pad_rows
from ..schedules.space import has_tensor_cores
from .split_k import split_k_convolutions
from ..stages import last_line
from .winograd import winograd_convolutions

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


PRECISIONS = ("fp32", "fp16")


def safe_names(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy whose value and node names are C identifiers, and the old-to-new map.

    TVM turns ONNX names into kernel parameter names; CUDA code generation breaks on names such
    as resnet50's ``gpu_0/data_0``. Inputs stay positional, so renaming changes nothing else.
    """
    proto = copy.deepcopy(proto)
    graph = proto.graph
    names: list[str] = [v.name for v in [*graph.input, *graph.output, *graph.value_info]]
    names += [t.name for t in graph.initializer]
    names += [x for node in graph.node for x in [*node.input, *node.output] if x]
    mapping: dict[str, str] = {}
    taken = {n for n in names if _IDENT.fullmatch(n)}
    for name in dict.fromkeys(names):
        if _IDENT.fullmatch(name):
            continue
        base = re.sub(r"\W", "_", name)
        base = base if base and not base[0].isdigit() else f"t_{base}"
        new, i = base, 1
        while new in taken:
            new, i = f"{base}_{i}", i + 1
        taken.add(new)
        mapping[name] = new
    if not mapping:
        return proto, {}
    for value in [*graph.input, *graph.output, *graph.value_info, *graph.initializer]:
        value.name = mapping.get(value.name, value.name)
    for node in graph.node:
        node.input[:] = [mapping.get(x, x) for x in node.input]
        node.output[:] = [mapping.get(x, x) for x in node.output]
        node.name = re.sub(r"\W", "_", node.name)
    return proto, mapping


def onnx_opset(proto: onnx.ModelProto) -> int:
    """The model's default-domain opset (0 when it imports none)."""
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def binary_sums(proto: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX `Sum` nodes as chains of `Add` (same broadcasting from opset 8 on).

    TVM imports a Sum as broadcast, stack and reduce: a kernel that copies its inputs into a
    stacked tensor first, and one that no convolution can take as its epilogue. resnet50's
    residual connections are Sums; as Adds they fuse into the convolution before them."""
    opset = onnx_opset(proto)
    graph = proto.graph
    if opset < 8 or not any(n.op_type == "Sum" and len(n.input) > 1 for n in graph.node):
        return proto
    proto = copy.deepcopy(proto)
    graph = proto.graph
    nodes = []
    for node in graph.node:
        if node.op_type != "Sum" or len(node.input) < 2:
            nodes.append(node)
            continue
        total = node.input[0]
        for i, addend in enumerate(node.input[1:], 1):
            last = i == len(node.input) - 1
            out = node.output[0] if last else f"{node.output[0]}__sum{i}"
            nodes.append(onnx.helper.make_node("Add", [total, addend], [out], name=f"{node.name}__add{i}"))
            total = out
    del graph.node[:]
    graph.node.extend(nodes)
    return proto


def identity_dropouts(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Inference-time `Dropout` nodes (mask unused) as `Identity`.

    TVM imports Dropout as an op returning (output, mask); Relax's layout conversion
    (`channels_last`) cannot infer a layout through that tuple and fails on the whole model
    (squeezenet). At inference Dropout is the identity, as ONNX Runtime treats it."""
    used = {x for node in proto.graph.node for x in node.input} | {o.name for o in proto.graph.output}
    drop = [i for i, n in enumerate(proto.graph.node)
            if n.op_type == "Dropout" and not (len(n.output) > 1 and n.output[1] and n.output[1] in used)]
    if not drop:
        return proto
    proto = copy.deepcopy(proto)
    for i in drop:
        node = proto.graph.node[i]
        node.CopyFrom(onnx.helper.make_node("Identity", [node.input[0]], [node.output[0]], name=node.name))
    return proto


@functools.cache
def _clip_as_relax_operators() -> None:
    """Import ONNX `Clip` (ReLU6 in most mobile CNNs) as Relax `maximum`/`minimum`.

    TVM's importer emits Clip as calls of TIR functions (`emit_te`), which Relax's
    `ToMixedPrecision` cannot type: fp16 import of a MobileNetV2-style model failed with
    "Expected TensorType, but got R.Callable". (ONNX Max and Min are no way around it: TVM
    imports those as a stack and a reduction.) Installed once in the importer's operator table;
    bounds and NaN handling stay the importer's own."""
    from tvm.relax.frontend.onnx import onnx_frontend

    class Clip(onnx_frontend.Clip):
        @classmethod
        def _impl_v1(cls, bb, inputs, attr, params):  # noqa: ANN001, ANN206 - the importer's signature
            x = bb.normalize(inputs[0])
            dtype = x.ty.dtype
            if "min" in attr:
                x = bb.normalize(relax.op.maximum(x, relax.const(float(attr["min"]), dtype)))
            if "max" in attr:
                x = bb.normalize(relax.op.minimum(x, relax.const(float(attr["max"]), dtype)))
            return x

        @classmethod
        def _impl_v13(cls, bb, inputs, attr, params):  # noqa: ANN001, ANN206
            x = inputs[0]
            if inputs[1] is not None:
                x = bb.normalize(relax.op.maximum(x, cls._sanitize_nan_clip_bound(bb, inputs[1], for_min=True)))
            if len(inputs) > 2 and inputs[2] is not None:
                x = bb.normalize(relax.op.minimum(x, cls._sanitize_nan_clip_bound(bb, inputs[2], for_min=False)))
            return x

    table = onnx_frontend._get_convert_map

    def convert_map() -> dict:
        return {**table(), "Clip": Clip}

    onnx_frontend._get_convert_map = convert_map


def import_onnx(model: LoadedModel, precision: str = "fp32") -> IRModule:
    """Relax module with weights bound as constants, constants folded, dead code removed.

    ``fp16``: Relax mixed precision, fp16 compute with fp32 accumulation in convolutions and
    matmuls; inputs and outputs keep their fp32 types.
    """
    from tvm.relax.frontend.onnx import from_onnx

    _clip_as_relax_operators()
    proto, renamed = safe_names(identity_dropouts(binary_sums(model.proto)))
    shapes = {renamed.get(k, k): v for k, v in model.input_shapes.items()}
    printed = io.StringIO()
    try:
        # The importer prints the operator it failed on ("Error converting operator Slice, with
        # inputs: ...") and raises without it: kept off the console, and named in the error.
        with contextlib.redirect_stdout(printed):
            mod = from_onnx(proto, shape_dict=shapes, keep_params_in_input=False)
    except Exception as exc:  # the importer raises many types; users need its message
        op = re.search(r"Error converting operator (\w+)", printed.getvalue())
        where = f" (operator {op.group(1)}, opset {onnx_opset(proto)})" if op else ""
        raise TunerError(f"TVM could not import {model.name}{where}: "
                         f"{last_line(exc) or type(exc).__name__}") from None
    passes = [
        relax.transform.FoldConstant(),
        conv_bias_norms,
        # Inference-time batch norm is a per-channel scale and shift: folded into the preceding
        # convolution's weights and bias (as ONNX Runtime does; a bias between the two moves into
        # the norm's mean first, conv_bias_norms.py), else decomposed into elementwise
        # ops that fuse into the kernel before it. Legalized as it is, batch norm is a kernel of
        # its own that reads and writes the whole activation (resnet50: 16 of them, 4 ms).
        relax.transform.FoldBatchnormToConv2D(),
        relax.transform.DecomposeOpsForInference(),
        relax.transform.FoldConstant(),
        relax.transform.DeadCodeElimination(),
    ]
    if precision == "fp16":
        # Weights are cast once here (FoldConstant), not at every inference; the residual stream
        # and its layer norms in fp16 too (half_residuals.py); average pools sum in fp32
        # (half_pools.py).
        passes += [relax.transform.ToMixedPrecision(out_dtype="float32"), half_residuals, half_pools,
                   relax.transform.FoldConstant(), relax.transform.DeadCodeElimination()]
    return tvm.transform.Sequential(passes)(mod)


def fusion_passes(target: Target, fast_math: bool = True, winograd: bool = True) -> list[tvm.transform.Pass]:
    """Legalize and fuse operators into TIR kernels (the tasks), as MetaSchedule expects.

    ``fast_math``: erf, exp, tanh and softmax as TVM's polynomial forms (`topi.fast_*`), which
    vectorize; the libm calls they replace are scalar (erf: 13 ns per element, most of a
    transformer's GELU). On CPU, the kernels' constant inputs (the weights) are marked
    layout-free, so the search may choose a packed weight layout (MetaSchedule's RewriteLayout)
    that compilation then applies once to the constants (`compile.prepack_weights`). Both change
    the kernels, hence their workload hashes: records of the plain kernels are never applied to
    these.

    ``winograd``: CPU 3x3 convolutions as Winograd F(4x4, 3x3) kernels (`tuner/rewrite/winograd.py`).
    On tensor-core GPUs, fp16 convolutions run channels last, and those with few output pixels
    and a long reduction split along it (`tuner/rewrite/split_k.py`).
    Also on CPU: channel shuffles as one channels-last gather (`tuner/rewrite/channel_shuffle.py`),
    grouped convolutions padded to whole vectors per group (`tuner/rewrite/group_padding.py`) and 1x1
    convolutions padded to rows that divide into register blocks (`tuner/rewrite/row_padding.py`)."""
    try:
        dispatch = list(relax_pipeline.library_dispatch_passes(target))
    except (ValueError, AttributeError):
        dispatch = []
    passes = [
        *dispatch,
        *([fast_math_where_possible] if fast_math else []),
        *([channels_last, channel_shuffles_nhwc, pad_groups, pad_rows] if target.kind.name == "llvm" else []),
        *([winograd_convolutions] if winograd and target.kind.name == "llvm" else []),
        *([half_convs_channels_last, split_k_convolutions] if has_tensor_cores(target) else []),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
        relax.transform.DeadCodeElimination(),
    ]
    if target.kind.name == "llvm":
        passes += [relax.transform.CanonicalizeBindings(), relax.transform.AttachAttrLayoutFreeBuffers()]
    return passes


@tvm.transform.module_pass(opt_level=0, name="tuner.FastMath")
def fast_math_where_possible(mod: IRModule, _ctx: tvm.transform.PassContext) -> IRModule:
    """TVM's FastMathTransform, except on a module it fails on (TVM 0.27 reads `.name` of every
    call's operator, which an extern function lacks: ONNX's Expand conformance models), which
    keeps its libm calls: still correct, only slower."""
    try:
        return relax.transform.FastMathTransform()(mod)
    except Exception:  # noqa: BLE001 - a TVM bug; the plain module is correct
        return mod


@tvm.transform.module_pass(opt_level=0, name="tuner.ChannelsLast")
def channels_last(mod: IRModule, _ctx: tvm.transform.PassContext) -> IRModule:
    """CPU convolutions in NHWC with OHWI weights (the weights transposed once, as constants);
    also fp16 ones on tensor-core GPUs (`half_convs_channels_last`).

    In NCHW a 1x1 convolution is a GEMM whose activation operand is column-major: each step of
    its reduction reads a new cache line H*W*4 bytes away (12.5 KB on resnet50's 56x56 layers),
    which the prefetchers do not follow; those kernels ran at 21-30% of the FMA peak. Channels
    last, every register-block row reads its own contiguous stream, as in a matmul: resnet50
    35 -> 29 ms, shufflenet 8.8 -> 6.5 ms, squeezenet 4.2 -> 3.7 ms (Intel Xeon AVX-512,
    2 cores, default schedules). A model whose layout Relax cannot convert keeps NCHW."""
    try:
        return relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"]})(mod)
    except Exception:  # noqa: BLE001 - TVM raises InternalError on ops it cannot infer a layout for
        return mod


def _has_half_convolution(mod: IRModule) -> bool:
    found = False

    def visit(node: object) -> None:
        nonlocal found
        if (isinstance(node, relax.Call) and isinstance(node.op, tvm.ir.Op) and node.op.name == "relax.nn.conv2d"
                and isinstance(node.args[0].ty, relax.TensorType) and node.args[0].ty.dtype == "float16"):
            found = True

    for func in mod.functions.values():
        if isinstance(func, relax.Function):
            relax.analysis.post_order_visit(func, visit)
    return found


@tvm.transform.module_pass(opt_level=0, name="tuner.HalfConvsChannelsLast")
def half_convs_channels_last(mod: IRModule, _ctx: tvm.transform.PassContext) -> IRModule:
    """fp16 convolutions on tensor-core GPUs in NHWC with OHWI weights.

    Their search space is tensor-core tiling only: the convolution as an implicit GEMM whose
    reduction runs over (channel, kernel row, kernel column). In NCHW, the activation operand of
    that GEMM is gathered across planes H*W apart, one element per channel, into shared memory;
    channels last, each of its rows is a contiguous run of channels, as in a matmul. fp32
    convolutions (no tensor cores) keep NCHW and their records."""
    if not _has_half_convolution(mod):
        return mod
    return channels_last(mod)


def fuse_for_tuning(mod: IRModule, target: Target, fast_math: bool = True, winograd: bool = True) -> IRModule:
    with target, tvm.transform.PassContext(opt_level=3):
        return tvm.transform.Sequential(fusion_passes(target, fast_math, winograd))(mod)
