// Batched in-place fast Walsh-Hadamard transform (unnormalized, Sylvester ordering).
//
// Loaded at run time by lsr_scale.cuda through cupy.RawModule (NVRTC), so this file is
// self-contained: no #include, extern "C" entry points, one per dtype.
//
// X is a contiguous (n, k) array, transformed along dim 0 (n a power of two). The host splits
// the log2(n) butterfly stages into passes. One pass views X as (outer, L, inner) with
// inner = h0 * k, where h0 is the butterfly distance reached by the previous passes, and applies
// the log2(L) stages h = h0, 2 h0, ..., (L/2) h0 along the middle axis. A thread block loads an
// L x C tile (C <= 32 consecutive elements of the inner axis, so global loads are coalesced)
// into shared memory, runs all its stages there, and writes the tile back in place. The first
// pass (h0 = 1) is the "shared-memory stages"; later passes are the global passes, each of
// which also batches log2(L) stages into one read and one write of X.
//
// Each butterfly is (a, b) -> (a + b, a - b) in the same stage order as the torch reference,
// so results are bit-identical to lsr_scale.cuda.fwht._fwht_torch.

template <typename T>
__device__ __forceinline__ void fwht_pass_impl(T* __restrict__ X, long long outer, long long L,
                                               long long inner, long long C, long long ncoltiles)
{
    extern __shared__ unsigned char fwht_smem_raw[];
    T* s = reinterpret_cast<T*>(fwht_smem_raw);
    const int Li = (int)L;
    const int Ci = (int)C;
    const int nel = Li * Ci;
    const long long ntiles = outer * ncoltiles;
    for (long long tile = blockIdx.x; tile < ntiles; tile += gridDim.x) {
        const long long o = tile / ncoltiles;
        const long long c0 = (tile - o * ncoltiles) * C;
        const long long rem = inner - c0;
        const int cw = rem < C ? (int)rem : Ci;  // valid columns in this tile
        T* base = X + o * L * inner + c0;
        for (int e = threadIdx.x; e < nel; e += blockDim.x) {
            const int r = e / Ci;
            const int c = e - r * Ci;
            s[e] = (c < cw) ? base[(long long)r * inner + c] : T(0);
        }
        __syncthreads();
        const int npairs = (Li >> 1) * Ci;
        for (int h = 1; h < Li; h <<= 1) {
            for (int p = threadIdx.x; p < npairs; p += blockDim.x) {
                const int q = p / Ci;
                const int c = p - q * Ci;
                const int i = ((q & ~(h - 1)) << 1) | (q & (h - 1));
                const int ia = i * Ci + c;
                const int ib = ia + h * Ci;
                const T a = s[ia];
                const T b = s[ib];
                s[ia] = a + b;
                s[ib] = a - b;
            }
            __syncthreads();
        }
        for (int e = threadIdx.x; e < nel; e += blockDim.x) {
            const int r = e / Ci;
            const int c = e - r * Ci;
            if (c < cw) base[(long long)r * inner + c] = s[e];
        }
        __syncthreads();
    }
}

extern "C" __global__ void fwht_pass_f32(float* X, long long outer, long long L, long long inner,
                                         long long C, long long ncoltiles)
{
    fwht_pass_impl<float>(X, outer, L, inner, C, ncoltiles);
}

extern "C" __global__ void fwht_pass_f64(double* X, long long outer, long long L, long long inner,
                                         long long C, long long ncoltiles)
{
    fwht_pass_impl<double>(X, outer, L, inner, C, ncoltiles);
}
