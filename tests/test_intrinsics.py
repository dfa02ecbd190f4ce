"""The fast import of TVM's tensor intrinsics registers exactly what the plain import does."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

from tuner.schedules.intrinsics import frame_stack

# Registers every intrinsic through a wrapper that records its name and its TVMScript, then
# imports the intrinsics the plain way or through tuner's loader; prints what was registered.
PROBE = """
import hashlib, json, sys, time
import tvm
from tvm.s_tir import TensorIntrin
seen = {}
register = TensorIntrin.register
def recording(name, desc, impl, override=False):
    seen[name] = hashlib.sha256((tvm.ir.save_json(desc) + tvm.ir.save_json(impl)).encode()).hexdigest()
    return register(name, desc, impl, override)
TensorIntrin.register = staticmethod(recording)
t = time.perf_counter()
if sys.argv[1] == "plain":
    import tvm.s_tir.tensor_intrin
else:
    from tuner.schedules.intrinsics import load_tensor_intrinsics
    load_tensor_intrinsics()
print(json.dumps({"seconds": time.perf_counter() - t, "intrinsics": seen}))
"""


def _registered(*modes: str) -> list[dict]:
    """What each mode's import registered, the imports run side by side (the plain one takes ~20 s)."""
    procs = [subprocess.Popen([sys.executable, "-c", PROBE, mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for mode in modes]
    found = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        found.append(json.loads(out.strip().splitlines()[-1]))
    return found


def test_fast_import_registers_the_same_intrinsics_as_the_plain_one() -> None:
    fast, plain = _registered("fast", "plain")
    assert len(plain["intrinsics"]) > 100  # wmma, mma, dot products for x86/ARM/...
    assert fast["intrinsics"] == plain["intrinsics"]  # the same names and the same TVMScript
    print(f"tensor intrinsics: fast {fast['seconds']:.1f} s, plain {plain['seconds']:.1f} s")


def _nested(fn):  # noqa: ANN001, ANN202 - a caller frame of its own, like a decorator's
    return fn()


def test_frame_stack_is_inspect_stack_for_what_the_parser_reads() -> None:
    ours, theirs = _nested(lambda: (frame_stack(), inspect.stack()))
    assert len(ours) == len(theirs) > 3
    for a, b in zip(ours, theirs):
        assert (a.frame, a.filename, a.lineno, a.function, a.code_context, a.index) == \
            (b.frame, b.filename, b.lineno, b.function, b.code_context, b.index)


def test_a_second_thread_waits_for_an_import_in_progress() -> None:
    """The preloading thread has started the import (the module is in sys.modules) but not
    finished it: a tuning thread that asks now must get every intrinsic, wmma included."""
    code = (
        "import sys, threading, time\n"
        "from tuner.schedules.intrinsics import load_tensor_intrinsics\n"
        "t = threading.Thread(target=load_tensor_intrinsics); t.start()\n"
        "while 'tvm.s_tir.tensor_intrin' not in sys.modules: time.sleep(0.001)\n"
        "load_tensor_intrinsics()\n"
        "from tvm.s_tir import TensorIntrin\n"
        "TensorIntrin.get('wmma_fill_16x16x16_f32')\n"
        "t.join()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
