#!/usr/bin/python3
"""Times OpenBLAS's sgemm (through numpy) on the products the benchmark
workloads' steps call (products.txt beside this script, which models'
TestStepProducts writes and checks), and prints the results as Go benchmark
lines with the names of BenchmarkSgemm and BenchmarkSgemmStep, so that they
sit beside internal/kernel/gemm's in one file:

    go test -run NONE -bench 'SgemmStep|Sgemm$' -count 3 ./internal/gemm > gemm.txt
    OPENBLAS_VERBOSE=2 OPENBLAS_NUM_THREADS=2 /usr/bin/python3 \\
        internal/kernel/gemm/testdata/sgemm_openblas.py 3 >> gemm.txt

OPENBLAS_VERBOSE=2 makes OpenBLAS say which kernels it picked (on stderr);
OPENBLAS_CORETYPE=Haswell or SkylakeX forces one. The path is named after
OPENBLAS_CORETYPE (openblas-auto when unset).

Where the work differs: numpy's matmul always stores C (beta 0), where the
products listed with beta 1 add to C, as the models call them: it reads C
once more (m x n floats against the m x n x k multiply-adds).

Needs Debian's python3-numpy (linked to libopenblas0)."""
import os
import sys
import time

import numpy as np

here = os.path.dirname(os.path.abspath(__file__))
products = []  # workload, calls, A transposed, B transposed, beta, m, n, k
with open(os.path.join(here, "products.txt")) as f:
    for line in f:
        if line.strip() and not line.startswith("#"):
            w, calls, op, beta, m, n, k = line.split()
            products.append((w, int(calls), op[0] == "T", op[1] == "T", int(beta), int(m), int(n), int(k)))

count = int(sys.argv[1]) if len(sys.argv) > 1 else 1
path = "openblas-" + os.environ.get("OPENBLAS_CORETYPE", "auto")
threads = os.environ.get("OPENBLAS_NUM_THREADS", "")
suffix = "-" + threads if threads and threads != "1" else ""
rng = np.random.default_rng(1)


def operands(at, bt, m, n, k):
    a = rng.random((k, m) if at else (m, k), dtype=np.float32) - 0.5
    b = rng.random((n, k) if bt else (k, n), dtype=np.float32) - 0.5
    # views: numpy calls sgemm with the transpose flag
    return (a.T if at else a), (b.T if bt else b), np.empty((m, n), np.float32)


def name(op, beta, m, n, k):
    return f"{m}x{n}x{k}/op={op}{'acc' if beta else ''}"


for _ in range(count):
    for w, calls, at, bt, beta, m, n, k in products:
        a, b, c = operands(at, bt, m, n, k)
        np.matmul(a, b, out=c)
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 1.0:
            np.matmul(a, b, out=c)
            reps += 1
        dt = (time.perf_counter() - t0) / reps
        op = ("T" if at else "N") + ("T" if bt else "N")
        print(f"BenchmarkSgemm/work={w}/shape={name(op, beta, m, n, k)}/path={path}{suffix} {reps} {dt*1e9:.0f} ns/op {2*m*n*k/dt/1e9:.2f} GFLOP/s", flush=True)
    for w in dict.fromkeys(p[0] for p in products):
        ops = [(calls, operands(at, bt, m, n, k), 2 * m * n * k) for pw, calls, at, bt, beta, m, n, k in products if pw == w]
        flops = sum(calls * f for calls, _, f in ops)

        def step():
            for calls, (a, b, c), _ in ops:
                for _ in range(calls):
                    np.matmul(a, b, out=c)

        step()
        reps, t0 = 0, time.perf_counter()
        while reps == 0 or time.perf_counter() - t0 < 1.0:
            step()
            reps += 1
        dt = (time.perf_counter() - t0) / reps
        print(f"BenchmarkSgemmStep/work={w}/path={path}{suffix} {reps} {dt*1e9:.0f} ns/op {flops/dt/1e9:.2f} GFLOP/s {dt*1e3:.2f} ms/step", flush=True)
