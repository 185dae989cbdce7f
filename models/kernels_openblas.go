//go:build openblas

package models

/*
#cgo LDFLAGS: -lmvec -lm
#pragma GCC optimize ("O3,fast-math")
#pragma GCC target ("avx2,fma")
#include <math.h>

// The gate nonlinearities and the cell update of one LSTM time step, written
// so that GCC vectorises them (expf through glibc's vector math library).
static void cell_forward(float *g, const float *cprev, float *cnext, float *hnext, float *tc, int B, int H) {
	for (int b = 0; b < B; b++) {
		float *ri = g + (long)b * 4 * H, *rf = ri + H, *rg = rf + H, *ro = rg + H;
		const float *cp = cprev + (long)b * H;
		float *cn = cnext + (long)b * H, *hn = hnext + (long)b * H, *t = tc + (long)b * H;
		for (int j = 0; j < H; j++) {
			float i = 1.0f / (1.0f + expf(-ri[j]));
			float f = 1.0f / (1.0f + expf(-rf[j]));
			float gg = 1.0f - 2.0f / (1.0f + expf(2.0f * rg[j]));
			float o = 1.0f / (1.0f + expf(-ro[j]));
			ri[j] = i; rf[j] = f; rg[j] = gg; ro[j] = o;
			float c = f * cp[j] + i * gg;
			cn[j] = c;
			float th = 1.0f - 2.0f / (1.0f + expf(2.0f * c));
			t[j] = th;
			hn[j] = o * th;
		}
	}
}

// exp_shift sets row[j] = expf(row[j] - mx) and returns their sum.
static double exp_shift(float *row, int n, float mx) {
	float s = 0;
	for (int j = 0; j < n; j++) {
		float e = expf(row[j] - mx);
		row[j] = e;
		s += e;
	}
	return s;
}
*/
import "C"

import "unsafe"

// Vector kernels of the fast build (C, vectorised by the compiler); the
// default build uses internal/kernel/vmath. Both are tested against the
// float64 references.

func cellForwardFast(g, cPrev, cNext, hNext, tc []float32, H int) {
	B := len(g) / (4 * H)
	if B == 0 {
		return
	}
	C.cell_forward((*C.float)(unsafe.Pointer(&g[0])), (*C.float)(unsafe.Pointer(&cPrev[0])), (*C.float)(unsafe.Pointer(&cNext[0])),
		(*C.float)(unsafe.Pointer(&hNext[0])), (*C.float)(unsafe.Pointer(&tc[0])), C.int(B), C.int(H))
}

func expShift(row []float32, mx float32) float64 {
	return float64(C.exp_shift((*C.float)(unsafe.Pointer(&row[0])), C.int(len(row)), C.float(mx)))
}
