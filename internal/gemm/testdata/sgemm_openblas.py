#!/usr/bin/python3
"""Times OpenBLAS's sgemm (through numpy) on BenchmarkSgemm's shapes and prints
the results as Go benchmark lines, so that benchstat or a plain diff can set
them beside internal/gemm's in one run:

    go test -run NONE -bench 'Sgemm$' -count 5 ./internal/gemm > gemm.txt
    for ct in Haswell SkylakeX; do
      OPENBLAS_CORETYPE=$ct OPENBLAS_NUM_THREADS=2 /usr/bin/python3 \
        internal/gemm/testdata/sgemm_openblas.py 5 > openblas-$ct.txt
    done

Keep the shapes in step with bench_test.go's benchShapes. Needs Debian's
python3-numpy (linked to libopenblas0)."""
import os, sys, time
import numpy as np

shapes = [  # name, A transposed, B transposed, m, n, k
    ("W2gates", False, False, 2560, 2048, 1024),
    ("W2gatesdX", False, True, 2560, 1024, 2048),
    ("W2gatesdW", True, False, 1024, 2048, 2560),
    ("W2softmax", False, False, 2560, 8000, 512),
    ("W2softmaxdX", False, True, 2560, 512, 8000),
    ("W2softmaxdW", True, False, 512, 8000, 2560),
    ("W2recurrent", False, False, 128, 2048, 512),
    ("G1", False, False, 100, 1200, 1200),
    ("G1dX", False, True, 100, 1200, 1200),
    ("G1dW", True, False, 1200, 1200, 100),
    ("G1D", False, False, 200, 1200, 784),
    ("cube1024", False, False, 1024, 1024, 1024),
]

count = int(sys.argv[1]) if len(sys.argv) > 1 else 1
path = "openblas-" + os.environ.get("OPENBLAS_CORETYPE", "auto")
threads = os.environ.get("OPENBLAS_NUM_THREADS", "")
rng = np.random.default_rng(1)
for _ in range(count):
    for name, at, bt, m, n, k in shapes:
        a = rng.random((k, m) if at else (m, k), dtype=np.float32) - 0.5
        b = rng.random((n, k) if bt else (k, n), dtype=np.float32) - 0.5
        a, b = (a.T if at else a), (b.T if bt else b)  # views: sgemm with the transpose flag
        c = np.empty((m, n), np.float32)
        np.matmul(a, b, out=c)
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 1.0:
            np.matmul(a, b, out=c)
            reps += 1
        dt = (time.perf_counter() - t0) / reps
        suffix = "-" + threads if threads and threads != "1" else ""
        print(f"BenchmarkSgemm/shape={name}/path={path}{suffix} {reps} {dt*1e9:.0f} ns/op {2*m*n*k/dt/1e9:.1f} GFLOP/s", flush=True)
