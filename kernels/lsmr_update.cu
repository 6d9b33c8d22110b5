// Fused LSMR vector update, in place, one pass over memory:
//
//     hbar = h + a * hbar;   x += b * hbar;   h = v + c * h
//
// optionally also producing ||x||^2 of the updated x (the normx LSMR's stopping test needs).
//
// Loaded at run time by lsr_scale.cuda through cupy.RawModule (NVRTC): self-contained, no
// #include, extern "C" entry points per dtype.
//
// The coefficients are read from device memory when their pointer is non-null (0-d tensors kept
// on the device: no host sync), else the scalar value arguments are used. Products and sums are
// rounded separately (no FMA contraction), exactly as the three torch in-place ops of the
// reference round them, so the vector results are bit-identical to the torch fallback.
//
// The norm is reduced without atomics: each block writes a partial sum (fixed shared-memory
// tree), and lsmr_sqnorm_finish_* adds the partials in a fixed order with one block.

#define LU_THREADS 256

__device__ __forceinline__ float lu_mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double lu_mul(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float lu_add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double lu_add(double a, double b) { return __dadd_rn(a, b); }

template <typename T>
__device__ __forceinline__ T lu_block_sum(T v)
{
    __shared__ T red[LU_THREADS];
    red[threadIdx.x] = v;
    __syncthreads();
    for (int off = LU_THREADS / 2; off > 0; off >>= 1) {
        if (threadIdx.x < off) red[threadIdx.x] += red[threadIdx.x + off];
        __syncthreads();
    }
    return red[0];
}

template <typename T>
__device__ __forceinline__ void lsmr_update_impl(T* __restrict__ x, T* __restrict__ h,
                                                 T* __restrict__ hbar, const T* __restrict__ v,
                                                 const T* pa, const T* pb, const T* pc, T a0,
                                                 T b0, T c0, long long m, T* partial)
{
    const T a = pa ? *pa : a0;
    const T b = pb ? *pb : b0;
    const T c = pc ? *pc : c0;
    T ss = T(0);
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < m; i += stride) {
        const T hi = h[i];
        const T hb = lu_add(lu_mul(hbar[i], a), hi);
        hbar[i] = hb;
        const T xi = lu_add(x[i], lu_mul(b, hb));
        x[i] = xi;
        h[i] = lu_add(lu_mul(hi, c), v[i]);
        ss += xi * xi;
    }
    if (partial) {
        const T tot = lu_block_sum(ss);
        if (threadIdx.x == 0) partial[blockIdx.x] = tot;
    }
}

template <typename T>
__device__ __forceinline__ void lsmr_sqnorm_finish_impl(const T* __restrict__ partial,
                                                        long long G, T* __restrict__ out)
{
    T s = T(0);
    for (long long i = threadIdx.x; i < G; i += blockDim.x) s += partial[i];
    const T tot = lu_block_sum(s);
    if (threadIdx.x == 0) *out = tot;
}

extern "C" __global__ void lsmr_update_f32(float* x, float* h, float* hbar, const float* v,
                                           const float* pa, const float* pb, const float* pc,
                                           float a0, float b0, float c0, long long m,
                                           float* partial)
{
    lsmr_update_impl<float>(x, h, hbar, v, pa, pb, pc, a0, b0, c0, m, partial);
}

extern "C" __global__ void lsmr_update_f64(double* x, double* h, double* hbar, const double* v,
                                           const double* pa, const double* pb, const double* pc,
                                           double a0, double b0, double c0, long long m,
                                           double* partial)
{
    lsmr_update_impl<double>(x, h, hbar, v, pa, pb, pc, a0, b0, c0, m, partial);
}

extern "C" __global__ void lsmr_sqnorm_finish_f32(const float* partial, long long G, float* out)
{
    lsmr_sqnorm_finish_impl<float>(partial, G, out);
}

extern "C" __global__ void lsmr_sqnorm_finish_f64(const double* partial, long long G,
                                                  double* out)
{
    lsmr_sqnorm_finish_impl<double>(partial, G, out);
}
