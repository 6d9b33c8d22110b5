// Sparse-sign sketch application: out = S @ X and out = S^T @ Y.
//
// Loaded at run time by lsr_scale.cuda through cupy.RawModule (NVRTC): self-contained, no
// #include, extern "C" entry points per dtype.
//
// S is s x n with zeta nonzeros per column: column j holds values[j, t] at row indices[j, t].
//
// S @ X is computed as a gather, never with atomics. The host builds once a CSR-by-row copy of S
// (rowptr: s + 1 offsets, col: column ids, val: values), with the entries of each row in
// (t, j) order -- the order in which the CPU reference (index_add_ over t, then j) adds them.
// Each thread owns output elements (r, c) and sums its row's entries sequentially in that order,
// with the products and sums rounded separately (no FMA contraction). The result has the same
// bits on every run and matches the CPU torch reference bit for bit.
//
// S^T @ Y needs no reorganisation: out[j, c] = sum_t values[j, t] * Y[indices[j, t], c], summed
// in t order, again matching the torch reference (a loop over t) bit for bit.
//
// Thread mapping (both kernels): `lpr` lanes per output row (lpr divides 32; lpr = 32 when
// k >= 32, so a warp reads 32 consecutive columns of a gathered row of X), blockDim.x / lpr rows
// per block along grid x, and SS_CPT column groups per thread along grid y.

#define SS_CPT 4

__device__ __forceinline__ float ss_mul(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double ss_mul(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float ss_add(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double ss_add(double a, double b) { return __dadd_rn(a, b); }

template <typename T>
__device__ __forceinline__ void ss_apply_impl(const long long* __restrict__ rowptr,
                                              const int* __restrict__ col,
                                              const T* __restrict__ val,
                                              const T* __restrict__ X, T* __restrict__ out,
                                              long long s, long long k, long long lpr)
{
    const int l = (int)lpr;
    const int lane = threadIdx.x % l;
    const long long r = (long long)blockIdx.x * (blockDim.x / l) + threadIdx.x / l;
    if (r >= s) return;
    const long long cbase = (long long)blockIdx.y * lpr * SS_CPT + lane;
    T acc[SS_CPT];
#pragma unroll
    for (int i = 0; i < SS_CPT; ++i) acc[i] = T(0);
    const long long p1 = rowptr[r + 1];
    for (long long p = rowptr[r]; p < p1; ++p) {
        const T v = val[p];
        const T* xr = X + (long long)col[p] * k;
#pragma unroll
        for (int i = 0; i < SS_CPT; ++i) {
            const long long c = cbase + i * lpr;
            if (c < k) acc[i] = ss_add(acc[i], ss_mul(v, xr[c]));
        }
    }
    T* orow = out + r * k;
#pragma unroll
    for (int i = 0; i < SS_CPT; ++i) {
        const long long c = cbase + i * lpr;
        if (c < k) orow[c] = acc[i];
    }
}

template <typename T>
__device__ __forceinline__ void ss_apply_t_impl(const long long* __restrict__ indices,
                                                const T* __restrict__ values,
                                                const T* __restrict__ Y, T* __restrict__ out,
                                                long long n, long long zeta, long long k,
                                                long long lpr)
{
    const int l = (int)lpr;
    const int lane = threadIdx.x % l;
    const long long j = (long long)blockIdx.x * (blockDim.x / l) + threadIdx.x / l;
    if (j >= n) return;
    const long long cbase = (long long)blockIdx.y * lpr * SS_CPT + lane;
    T acc[SS_CPT];
#pragma unroll
    for (int i = 0; i < SS_CPT; ++i) acc[i] = T(0);
    for (long long t = 0; t < zeta; ++t) {
        const T v = values[j * zeta + t];
        const T* yr = Y + indices[j * zeta + t] * k;
#pragma unroll
        for (int i = 0; i < SS_CPT; ++i) {
            const long long c = cbase + i * lpr;
            if (c < k) acc[i] = ss_add(acc[i], ss_mul(v, yr[c]));
        }
    }
    T* orow = out + j * k;
#pragma unroll
    for (int i = 0; i < SS_CPT; ++i) {
        const long long c = cbase + i * lpr;
        if (c < k) orow[c] = acc[i];
    }
}

extern "C" __global__ void sparse_sign_f32(const long long* rowptr, const int* col,
                                           const float* val, const float* X, float* out,
                                           long long s, long long k, long long lpr)
{
    ss_apply_impl<float>(rowptr, col, val, X, out, s, k, lpr);
}

extern "C" __global__ void sparse_sign_f64(const long long* rowptr, const int* col,
                                           const double* val, const double* X, double* out,
                                           long long s, long long k, long long lpr)
{
    ss_apply_impl<double>(rowptr, col, val, X, out, s, k, lpr);
}

extern "C" __global__ void sparse_sign_t_f32(const long long* indices, const float* values,
                                             const float* Y, float* out, long long n,
                                             long long zeta, long long k, long long lpr)
{
    ss_apply_t_impl<float>(indices, values, Y, out, n, zeta, k, lpr);
}

extern "C" __global__ void sparse_sign_t_f64(const long long* indices, const double* values,
                                             const double* Y, double* out, long long n,
                                             long long zeta, long long k, long long lpr)
{
    ss_apply_t_impl<double>(indices, values, Y, out, n, zeta, k, lpr);
}
