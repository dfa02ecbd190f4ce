"""How long a cache line takes to go from one core to another and back: which cache the VM's
two vCPUs share at the moment, recorded beside every round a benchmark times.

On the 2-core EPYC VMs here (znver4, 2026-12-05) the host moved the two vCPUs, every few
seconds to minutes, between two cores that share an L3 (round trip ~60 ns) and two that do not
(~340 ns). Squeezenet's module on 2 threads ran 3.0 ms in the first state and 6.1 ms in the
second (slower than on one thread, 5.6 ms; the FMA peak on two threads stayed 230 GFLOP/s),
ONNX Runtime 3.7 and 5.5 ms: tuned / ORT 0.84 vs 1.14 on the same machine minutes apart. A
ratio is only comparable with ratios measured in the same state.

The probe is a few lines of C (Python threads cannot ping-pong a cache line), compiled once
with the system's `cc`; without a compiler it reads None.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

_SOURCE = r"""
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static _Atomic long flag __attribute__((aligned(64)));
static _Atomic int stop;
static int cpu_a, cpu_b;

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static void pin(int cpu) {
  cpu_set_t s;
  CPU_ZERO(&s);
  CPU_SET(cpu, &s);
  pthread_setaffinity_np(pthread_self(), sizeof s, &s);
}

static void *echo(void *unused) {
  pin(cpu_b);
  for (long v = 1; !atomic_load(&stop); v += 2) {
    while (atomic_load(&flag) != v && !atomic_load(&stop)) {}
    atomic_store(&flag, v + 1);
  }
  return unused;
}

int main(int argc, char **argv) {
  double seconds = atof(argv[1]);
  cpu_a = atoi(argv[2]);
  cpu_b = atoi(argv[3]);
  pthread_t t;
  pthread_create(&t, 0, echo, 0);
  pin(cpu_a);
  long v = 0, trips = 0;
  double start = now();
  while (now() - start < seconds) {
    for (int i = 0; i < 1000; i++, v += 2) {
      atomic_store(&flag, v + 1);
      while (atomic_load(&flag) != v + 2) {}
    }
    trips += 1000;
  }
  printf("%.1f\n", (now() - start) / trips * 1e9);
  atomic_store(&stop, 1);
  pthread_join(t, 0);
  return 0;
}
"""


def _probe() -> Path | None:
    """The compiled probe, built once per source version; None without a C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    exe = Path(tempfile.gettempdir()) / f"tuner-core-latency-{hashlib.sha256(_SOURCE.encode()).hexdigest()[:12]}"
    if not exe.exists():
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp) / "probe.c"
            src.write_text(_SOURCE)
            built = subprocess.run([cc, "-O2", "-pthread", "-o", str(Path(tmp) / "probe"), str(src)],
                                   capture_output=True, text=True)
            if built.returncode != 0:
                return None
            os.replace(Path(tmp) / "probe", exe)
    return exe


def round_trip_ns(seconds: float = 0.05) -> float | None:
    """The mean round trip (ns) of a cache line between this process's first two
    CPUs over `seconds`; None on one CPU or without a compiler."""
    cpus = sorted(os.sched_getaffinity(0))
    exe = _probe()
    if exe is None or len(cpus) < 2:
        return None
    out = subprocess.run([str(exe), str(seconds), str(cpus[0]), str(cpus[1])], capture_output=True, text=True,
                         timeout=30 + seconds)
    return float(out.stdout) if out.returncode == 0 else None


def shares_cache(ns: float | None) -> bool | None:
    """Whether a round trip this short means the two cores share a cache (here ~60 vs ~340 ns)."""
    return None if ns is None else ns < 150


if __name__ == "__main__":
    print(round_trip_ns(0.5))
