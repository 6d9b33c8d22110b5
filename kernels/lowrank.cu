// Low-rank (Nystrom) preconditioner application with low-precision basis storage:
//
//     out = U (d * (U^T y)) + c (y - U U^T y) = U ((d - c) * (U^T y)) + c y
//
// for an orthonormal basis U (m x l, row-major) stored in bf16, fp16 or the working dtype, and
// y of shape (m,). Accumulation is in the working dtype of y (fp32 for fp32 y, fp64 for fp64 y).
//
// Loaded at run time by lsr_scale.cuda through cupy.RawModule (NVRTC): self-contained, no
// #include (bf16 and fp16 are decoded by hand from their raw 16-bit patterns), extern "C" entry
// points per (storage, working dtype) pair.
//
// Two passes over U, three launches:
//   1. lowrank_zt_*:      block b sums U[r, :] * y[r] over its contiguous row range into
//                         partial[b, :] (registers, no atomics);
//   2. lowrank_reduce_*:  z = sum_b partial[b, :] in fixed b order; w = (d - c) * z (l threads);
//   3. lowrank_apply_*:   one warp per row: out[r] = U[r, :] . w + c * y[r], with w in shared
//                         memory and a fixed shuffle-tree reduction.
// The summation order depends only on (m, l, grid), so results are reproducible run to run.
//
// "x2" variants read two 16-bit elements per 32-bit load (used when l is even and U is 4-byte
// aligned), so a warp reads 128 contiguous bytes per load instruction.
//
// c is read from device memory when cptr != 0 (a 0-d tensor: no host sync), else cval is used.

#define LR_MAXU 4  // max 16/32/64-bit load units per thread in pass 1 (l/N <= 4 * 1024)

__device__ __forceinline__ float lr_bf16(unsigned int bits16) { return __uint_as_float(bits16 << 16); }

__device__ __forceinline__ float lr_f16(unsigned short h)
{
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

struct LdBF16 {
    typedef unsigned short U;
    enum { N = 1 };
    static __device__ __forceinline__ float get(U u, int) { return lr_bf16((unsigned int)u); }
};
struct LdBF16x2 {  // element 0 in the low half (little endian)
    typedef unsigned int U;
    enum { N = 2 };
    static __device__ __forceinline__ float get(U u, int e)
    {
        return e == 0 ? __uint_as_float(u << 16) : __uint_as_float(u & 0xffff0000u);
    }
};
struct LdF16 {
    typedef unsigned short U;
    enum { N = 1 };
    static __device__ __forceinline__ float get(U u, int) { return lr_f16(u); }
};
struct LdF16x2 {
    typedef unsigned int U;
    enum { N = 2 };
    static __device__ __forceinline__ float get(U u, int e)
    {
        return lr_f16((unsigned short)(e == 0 ? (u & 0xffffu) : (u >> 16)));
    }
};
struct LdF32 {
    typedef float U;
    enum { N = 1 };
    static __device__ __forceinline__ float get(U u, int) { return u; }
};
struct LdF64 {
    typedef double U;
    enum { N = 1 };
    static __device__ __forceinline__ double get(U u, int) { return u; }
};

template <class LD, typename ACC, typename TY>
__device__ __forceinline__ void lr_zt_impl(const typename LD::U* __restrict__ U,
                                           const TY* __restrict__ y, ACC* __restrict__ partial,
                                           long long m, long long lu, long long rows_per_block)
{
    ACC acc[LR_MAXU][LD::N];
#pragma unroll
    for (int i = 0; i < LR_MAXU; ++i)
#pragma unroll
        for (int e = 0; e < LD::N; ++e) acc[i][e] = ACC(0);
    const long long r0 = (long long)blockIdx.x * rows_per_block;
    long long r1 = r0 + rows_per_block;
    if (r1 > m) r1 = m;
#pragma unroll 4
    for (long long r = r0; r < r1; ++r) {
        const ACC yr = (ACC)y[r];
        const typename LD::U* ur = U + r * lu;
#pragma unroll
        for (int i = 0; i < LR_MAXU; ++i) {
            const long long cu = threadIdx.x + (long long)i * blockDim.x;
            if (cu < lu) {
                const typename LD::U u = ur[cu];
#pragma unroll
                for (int e = 0; e < LD::N; ++e) acc[i][e] += (ACC)LD::get(u, e) * yr;
            }
        }
    }
    const long long l = lu * LD::N;
    ACC* prow = partial + (long long)blockIdx.x * l;
#pragma unroll
    for (int i = 0; i < LR_MAXU; ++i) {
        const long long cu = threadIdx.x + (long long)i * blockDim.x;
        if (cu < lu) {
#pragma unroll
            for (int e = 0; e < LD::N; ++e) prow[cu * LD::N + e] = acc[i][e];
        }
    }
}

template <typename ACC, typename TY>
__device__ __forceinline__ void lr_reduce_impl(const ACC* __restrict__ partial, long long G,
                                               long long l, const TY* __restrict__ d,
                                               const TY* cptr, TY cval, ACC* __restrict__ w)
{
    const long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= l) return;
    ACC z = ACC(0);
    for (long long b = 0; b < G; ++b) z += partial[b * l + j];
    const TY c = cptr ? *cptr : cval;
    w[j] = (ACC)(d[j] - c) * z;
}

template <class LD, typename ACC, typename TY>
__device__ __forceinline__ void lr_apply_impl(const typename LD::U* __restrict__ U,
                                              const TY* __restrict__ y,
                                              const ACC* __restrict__ w, const TY* cptr,
                                              TY cval, TY* __restrict__ out, long long m,
                                              long long lu)
{
    extern __shared__ unsigned char lr_smem_raw[];
    ACC* ws = reinterpret_cast<ACC*>(lr_smem_raw);
    const long long l = lu * LD::N;
    for (long long i = threadIdx.x; i < l; i += blockDim.x) ws[i] = w[i];
    __syncthreads();
    const TY c = cptr ? *cptr : cval;
    const int lane = threadIdx.x & 31;
    const long long nw = blockDim.x >> 5;
    const long long warp = threadIdx.x >> 5;
    for (long long r = (long long)blockIdx.x * nw + warp; r < m; r += (long long)gridDim.x * nw) {
        const typename LD::U* ur = U + r * lu;
        ACC dot = ACC(0);
        for (long long cu = lane; cu < lu; cu += 32) {
            const typename LD::U u = ur[cu];
#pragma unroll
            for (int e = 0; e < LD::N; ++e) dot += (ACC)LD::get(u, e) * ws[cu * LD::N + e];
        }
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
        if (lane == 0) out[r] = (TY)(dot + (ACC)(c * y[r]));
    }
}

#define LR_ENTRIES(NAME, LD, ACC, TY)                                                          \
    extern "C" __global__ void lowrank_zt_##NAME(const LD::U* U, const TY* y, ACC* partial,   \
                                                 long long m, long long lu, long long rpb)     \
    {                                                                                          \
        lr_zt_impl<LD, ACC, TY>(U, y, partial, m, lu, rpb);                                    \
    }                                                                                          \
    extern "C" __global__ void lowrank_apply_##NAME(const LD::U* U, const TY* y,              \
                                                    const ACC* w, const TY* cptr, TY cval,     \
                                                    TY* out, long long m, long long lu)        \
    {                                                                                          \
        lr_apply_impl<LD, ACC, TY>(U, y, w, cptr, cval, out, m, lu);                           \
    }

LR_ENTRIES(bf16_f32, LdBF16, float, float)
LR_ENTRIES(bf16x2_f32, LdBF16x2, float, float)
LR_ENTRIES(f16_f32, LdF16, float, float)
LR_ENTRIES(f16x2_f32, LdF16x2, float, float)
LR_ENTRIES(f32_f32, LdF32, float, float)
LR_ENTRIES(bf16_f64, LdBF16, double, double)
LR_ENTRIES(bf16x2_f64, LdBF16x2, double, double)
LR_ENTRIES(f16_f64, LdF16, double, double)
LR_ENTRIES(f16x2_f64, LdF16x2, double, double)
LR_ENTRIES(f64_f64, LdF64, double, double)

extern "C" __global__ void lowrank_reduce_f32(const float* partial, long long G, long long l,
                                              const float* d, const float* cptr, float cval,
                                              float* w)
{
    lr_reduce_impl<float, float>(partial, G, l, d, cptr, cval, w);
}

extern "C" __global__ void lowrank_reduce_f64(const double* partial, long long G, long long l,
                                              const double* d, const double* cptr, double cval,
                                              double* w)
{
    lr_reduce_impl<double, double>(partial, G, l, d, cptr, cval, w);
}
