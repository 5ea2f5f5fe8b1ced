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

// out[r] = (sum over c of rows[r, c]^2) / width, summed in column order from
// 0 without FMA contraction, as the CPU backend's row-wise Adagrad does.
extern "C" __global__ void featmux_row_mean_square(const float *rows, float *out, u64 n, u64 width) {
    for (u64 r = blockIdx.x * (u64)blockDim.x + threadIdx.x; r < n;
         r += (u64)blockDim.x * gridDim.x) {
        float acc = 0.0f;
        for (u64 c = 0; c < width; ++c) {
            float x = rows[r * width + c];
            acc = __fadd_rn(acc, __fmul_rn(x, x));
        }
        out[r] = __fdiv_rn(acc, (float)width);
    }
}
