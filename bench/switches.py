"""Features of the CPU compilation that a benchmark can turn off, by name: `bench/defaults_ab.py`
times a model with and without one; `bench/sweep_blocks.py` turns row padding off to time the
blocks of the rows it was given."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tuner.rewrite import group_padding, row_padding, winograd
from tuner.schedules import register_blocking

# What turns a feature off: (module, attribute, replacement: a function or a constant).
SWITCHES: dict[str, tuple[Any, str, Any]] = {
    # convolutions computed over padded rows for a better register block (row_padding.padded_rows)
    "row-padding": (row_padding, "padded_rows", lambda *_: None),
    # convolutions of kernels larger than 1x1 (those Winograd leaves direct) computed over padded rows
    # too (row_padding.MAX_KERNEL): off, 1x1 ones only
    "row-padding-kxk": (row_padding, "MAX_KERNEL", 1),
    # ungrouped convolutions' output channels padded to whole vectors, or to 2- or 3-vector register
    # blocks (group_padding.padded_ungrouped)
    "ungrouped-padding": (group_padding, "padded_ungrouped", lambda *_: None),
    # 3-register blocks' vector loop as one-register vectors (register_blocking.vector_step)
    "vector-step": (register_blocking, "vector_step", lambda isa, full, _widths: isa.lanes if isa.lanes < full else None),
    # register blocks sweeping the vector blocks inside each row block (register_blocking.rows_outer)
    "a-stationary": (register_blocking, "rows_outer", lambda *_: False),
    # threads split GEMMs by rows where activations outweigh weights (register_blocking.rows_parallel):
    # off, by the rule's cache order (output channels, Winograd positions)
    "rows-parallel": (register_blocking, "rows_parallel", lambda *_: False),
    # convolutions with few output tiles left direct (winograd.enough_tiles): off, every eligible one Winograd
    "winograd-min-tiles": (winograd, "enough_tiles", lambda *_: True),
    # Winograd GEMMs whose weights dominate swept in reduction panels (register_blocking.reduction_panel):
    # off, the whole reduction per block of vectors
    "winograd-panels": (register_blocking, "reduction_panel", lambda *_: None),
    # grouped convs' epilogues iterated by (group, channel in group) (register_blocking._split_group_channel):
    # off, by output channel (multi-vector blocks then keep their accumulators in memory)
    "group-epilogue-split": (register_blocking, "_split_group_channel", lambda *_: None),
    # producers that only copy their input (a grouped conv's padding of nothing) inlined into the
    # register-blocked GEMM (register_blocking._inline_copies): off, the copy stays a pass of its own
    "inline-copies": (register_blocking, "_inline_copies", lambda *_: None),
    # register blocks of 5 or 6 vectors a row (register_blocking.MAX_BLOCK_VECTORS): off, at most 4
    "five-six-vectors": (register_blocking, "MAX_BLOCK_VECTORS", 4),
    # depthwise convs blocked along the output's x, the padding computed per channel block and output
    # row (register_blocking.depthwise_by_width): off, blocked over y and x fused, padded in a pass first
    "depthwise-by-width": (register_blocking, "depthwise_by_width", lambda *_: False),
    # register blocks may claim all 16 of AVX2's vector registers (register_blocking.usable_registers):
    # off, 15 (AVX-512 keeps its three quarters either way)
    "avx2-all-registers": (register_blocking, "usable_registers",
                           lambda isa: isa.registers * 3 // 4 if isa.registers > 16 else isa.registers - 1),
}


@contextmanager
def without(switch: str | None) -> Iterator[None]:
    """The feature `switch` turned off inside the block (the module's attribute replaced); with
    None, every feature as it is."""
    if switch is None:
        yield
        return
    module, name, off = SWITCHES[switch]
    saved = getattr(module, name)
    setattr(module, name, off)
    try:
        yield
    finally:
        setattr(module, name, saved)
