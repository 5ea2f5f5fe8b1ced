// Row kernels of the candle backend on CUDA (see row_ops.rs), compiled at
// run time by NVRTC the first time a device uses them.
//
// Why custom kernels: candle 0.11's CUDA `scatter` and `index_add` along
// dim 0 run one thread per column and loop over all rows serially (a push of
// 65,536 rows would use 16 threads), its `index_select` indexes with 32-bit
// integers (wrong past 2^32 floats), and its `sum_keepdim` over rows of 8
// floats returned 0 on an H100. These use 64-bit indexing and grid-stride
// loops.

typedef unsigned long long u64;

// out[i, c] = table[ids[i], c]; T is float or float4 (width in units of T).
template <typename T>
__device__ void gather_rows(const T *table, const long long *ids, T *out, u64 n, u64 width) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n * width;
         i += (u64)blockDim.x * gridDim.x) {
        u64 r = i / width;
        out[i] = table[(u64)ids[r] * width + (i - r * width)];
    }
}

// table[ids[i], c] = src[i, c]; ids must be unique.
template <typename T>
__device__ void scatter_rows(T *table, const long long *ids, const T *src, u64 n, u64 width) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < n * width;
         i += (u64)blockDim.x * gridDim.x) {
        u64 r = i / width;
        table[(u64)ids[r] * width + (i - r * width)] = src[i];
    }
}

extern "C" __global__ void featmux_gather_rows(const float *t, const long long *ids, float *o, u64 n, u64 w) {
    gather_rows(t, ids, o, n, w);
}
extern "C" __global__ void featmux_gather_rows_x4(const float4 *t, const long long *ids, float4 *o, u64 n, u64 w) {
    gather_rows(t, ids, o, n, w);
}
extern "C" __global__ void featmux_scatter_rows(float *t, const long long *ids, const float *s, u64 n, u64 w) {
    scatter_rows(t, ids, s, n, w);
}
extern "C" __global__ void featmux_scatter_rows_x4(float4 *t, const long long *ids, const float4 *s, u64 n, u64 w) {
    scatter_rows(t, ids, s, n, w);
}

// out[s, c] = sum over e in [offsets[s], offsets[s+1]) of weights[e] * rows[e, c],
// summed in entry order from 0 with separately rounded multiply and add (no
// FMA contraction), exactly as the CPU backend does.
extern "C" __global__ void featmux_segment_sum(const float *rows, const float *weights,
                                               const unsigned int *offsets, float *out,
                                               u64 segments, u64 width) {
    for (u64 i = blockIdx.x * (u64)blockDim.x + threadIdx.x; i < segments * width;
         i += (u64)blockDim.x * gridDim.x) {
        u64 s = i / width, c = i - s * width;
        float acc = 0.0f;
        for (u64 e = offsets[s]; e < offsets[s + 1]; ++e) {
            acc = __fadd_rn(acc, __fmul_rn(weights[e], rows[e * width + c]));
        }
        out[i] = acc;
    }
}

// One optimizer step over n unique rows, fused: reads each row's weights and
// state from the tables at ids[r] and its gradient g[r], writes the new row
// to out_w[r] and the new state to out_s[r], and lowers *bad to the least r
// whose new values are not all finite (the host refuses the step then, and
// nothing reaches the tables). One kernel instead of gathers and a tensor op
// per formula term: each byte of a row crosses memory once each way.
//
// A group of `lanes` threads (a power of two <= 32, about width / 4) works on
// one row, lane l on columns l, l + lanes, ...: neighbouring lanes touch
// neighbouring floats, so a warp's loads of one row coalesce. Row-wise
// Adagrad sums the gradient's squares across the group with shuffles. The
// formulas are Optimizer::step's, with separately rounded operations (no FMA
// contraction), so results match the CPU backend except the row-wise sum,
// which is added up in another order.
//
// kind and hyper-parameters, as `row_ops::OptimizerKernel` sends them:
//   0 SGD        (p0 lr)
//   1 Adagrad    (p0 lr, p1 eps)
//   2 row-wise   (p0 lr, p1 eps)
//   3 Adam       (p0 lr, p1 beta1, p2 beta2, p3 eps)
//   4 FTRL       (p0 alpha, p1 beta, p2 l1, p3 l2)

#define FMUL __fmul_rn
#define FADD __fadd_rn
#define FSUB __fsub_rn
#define FDIV __fdiv_rn
#define FSQRT __fsqrt_rn

__device__ bool is_finite(float x) { return fabsf(x) <= 3.402823466e+38f; }

// 1 - beta^t in double, rounded once, as optimizer::bias_correction does.
__device__ float bias_correction(float beta, float t) {
    return (float)(1.0 - exp((double)t * log((double)beta)));
}

extern "C" __global__ void featmux_optimizer_step(
    int kind, float p0, float p1, float p2, float p3,
    const float *w_table, const float *s_table, const long long *ids, const float *g,
    float *out_w, float *out_s, unsigned long long *bad,
    u64 n, u64 d, u64 sw, unsigned int lanes) {
    const u64 stride = (u64)blockDim.x * gridDim.x;  // a multiple of 32
    const unsigned int lane = threadIdx.x % lanes;
    // Whole warps run each iteration (so every lane of a group reaches the
    // shuffles); lanes past the last row only contribute zeros.
    for (u64 t = blockIdx.x * (u64)blockDim.x + threadIdx.x; (t & ~(u64)31) < n * lanes;
         t += stride) {
        const u64 r = t / lanes;
        const bool live = r < n;
        const float *w = live ? w_table + (u64)ids[r] * d : 0;
        const float *s = live && sw ? s_table + (u64)ids[r] * sw : 0;
        const float *gr = g + r * d;
        float *ow = out_w + r * d;
        float *os = out_s + r * sw;
        bool finite = true;

        // Row-wise Adagrad's accumulator: every lane needs the row's sum.
        float acc = 0.0f;
        if (kind == 2) {
            float part = 0.0f;
            if (live) {
                for (u64 c = lane; c < d; c += lanes) part = FADD(part, FMUL(gr[c], gr[c]));
            }
            for (unsigned int o = lanes / 2; o > 0; o /= 2) {
                part = FADD(part, __shfl_xor_sync(0xffffffffu, part, o, lanes));
            }
            if (live) acc = FADD(s[0], FDIV(part, (float)d));
        }
        if (!live) continue;

        // Adam's step count and bias corrections, the same in every lane.
        float step = 0.0f, c1 = 1.0f, c2 = 1.0f;
        if (kind == 3) {
            step = FADD(s[2 * d], 1.0f);
            c1 = bias_correction(p1, step);
            c2 = bias_correction(p2, step);
        }
        for (u64 c = lane; c < d; c += lanes) {
            const float x = w[c], gc = gr[c];
            float nw;
            switch (kind) {
            case 0:
                nw = FSUB(x, FMUL(p0, gc));
                break;
            case 1: {
                const float a = FADD(s[c], FMUL(gc, gc));
                nw = FSUB(x, FDIV(FMUL(p0, gc), FADD(FSQRT(a), p1)));
                os[c] = a;
                finite = finite && is_finite(a);
                break;
            }
            case 2:
                nw = FSUB(x, FDIV(FMUL(p0, gc), FADD(FSQRT(acc), p1)));
                break;
            case 3: {
                const float m = FADD(FMUL(p1, s[c]), FMUL(FSUB(1.0f, p1), gc));
                const float v = FADD(FMUL(p2, s[d + c]), FMUL(FSUB(1.0f, p2), FMUL(gc, gc)));
                const float m_hat = FDIV(m, c1), v_hat = FDIV(v, c2);
                nw = FSUB(x, FDIV(FMUL(p0, m_hat), FADD(FSQRT(v_hat), p3)));
                os[c] = m;
                os[d + c] = v;
                finite = finite && is_finite(m) && is_finite(v);
                break;
            }
            default: {
                const float z0 = s[c], n0 = s[d + c];
                const float n1 = FADD(n0, FMUL(gc, gc));
                const float sigma = FDIV(FSUB(FSQRT(n1), FSQRT(n0)), p0);
                const float z = FADD(z0, FSUB(gc, FMUL(sigma, x)));
                nw = fabsf(z) <= p2
                         ? 0.0f
                         : -FDIV(FSUB(z, FMUL(copysignf(1.0f, z), p2)),
                                 FADD(FDIV(FADD(p1, FSQRT(n1)), p0), p3));
                os[c] = z;
                os[d + c] = n1;
                finite = finite && is_finite(z) && is_finite(n1);
                break;
            }
            }
            ow[c] = nw;
            finite = finite && is_finite(nw);
        }
        if (lane == 0) {
            if (kind == 2) {
                os[0] = acc;
                finite = finite && is_finite(acc);
            } else if (kind == 3) {
                os[2 * d] = step;
                finite = finite && is_finite(step);
            }
        }
        if (!finite) atomicMin(bad, (unsigned long long)r);
    }
}
