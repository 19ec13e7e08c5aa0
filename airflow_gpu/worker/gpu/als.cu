// Implicit-feedback ALS by conjugate gradient, the same method and confidence semantics as
// implicit 0.7.3 (3 CG steps per row, warm-started from the current factors, residual
// r = sum_i [c_i - (c_i - 1) y_i.x] y_i - YtY x with YtY = Y'Y + lambda I; a stored negative
// value -c counts as confidence c with preference 0). What differs is the schedule:
//
// * light rows (at most the heavy threshold): one warp per row, many rows per block, YtY in
//   shared memory once per block. Lanes hold FACTORS/32 elements each; a row's indices and
//   confidences are read 32 at a time and handed out by shuffle;
// * heavy rows: the row's interactions are cut into chunks of CHUNK, a warp per chunk
//   computes its partial sum of the sparse term, writes it to its own slot (no atomics, so
//   the result does not depend on scheduling), and one warp per heavy row then adds the
//   slots in chunk order and takes the CG step. The most popular item no longer serialises
//   the whole iteration on one block;
// * setup: transpose (counting sort with 64-bit offsets) and the scatter run here too.
//
// FACTORS is a compile-time constant (-DFACTORS=64), so the per-lane arrays live in registers.
// Offsets into the interaction arrays are 64-bit: a seed-scale matrix has 1e9 of them and
// int32 would overflow past 2^31.
//
// Factor storage: the solve kernels are templates over the type X and Y are stored in. float is
// always built; with -DBF16_FACTORS the *_bf16 kernels store them as bfloat16 (half the memory
// and half the gathered bytes). Either way every product, sum and CG step is float: a row is
// widened on load and rounded to nearest even once, on store. Only those builds include
// cuda_bf16.h, so the float32 solver needs no CUDA header at all.

#ifndef FACTORS
#define FACTORS 64
#endif

#define WARP 32
#define PER_LANE ((FACTORS + WARP - 1) / WARP)
#define FULL_MASK 0xffffffffu
#define CG_EPSILON 1e-20f

typedef long long i64;

#ifdef BF16_FACTORS
#include <cuda_bf16.h>
#endif

__device__ __forceinline__ float widen(float value) { return value; }
__device__ __forceinline__ void narrow(float* at, float value) { *at = value; }
#ifdef BF16_FACTORS
__device__ __forceinline__ float widen(__nv_bfloat16 value) { return __bfloat162float(value); }
__device__ __forceinline__ void narrow(__nv_bfloat16* at, float value) { *at = __float2bfloat16_rn(value); }
#endif

__device__ __forceinline__ float warp_sum(float value) {
#pragma unroll
    for (int offset = WARP / 2; offset > 0; offset /= 2) value += __shfl_xor_sync(FULL_MASK, value, offset);
    return value;
}

__device__ __forceinline__ float dot_lanes(const float (&a)[PER_LANE], const float (&b)[PER_LANE]) {
    float partial = 0.f;
#pragma unroll
    for (int j = 0; j < PER_LANE; ++j) partial += a[j] * b[j];
    return warp_sum(partial);
}

template <typename T>
__device__ __forceinline__ void load_row(const T* __restrict__ factors, i64 row, int lane, float (&out)[PER_LANE]) {
    const T* base = factors + row * FACTORS;
#pragma unroll
    for (int j = 0; j < PER_LANE; ++j) {
        int k = lane + j * WARP;
        out[j] = (k < FACTORS) ? widen(__ldg(base + k)) : 0.f;
    }
}

template <typename T>
__device__ __forceinline__ void store_row(T* __restrict__ factors, i64 row, int lane, const float (&value)[PER_LANE]) {
    T* base = factors + row * FACTORS;
#pragma unroll
    for (int j = 0; j < PER_LANE; ++j) {
        int k = lane + j * WARP;
        if (k < FACTORS) narrow(base + k, value[j]);
    }
}

// out = YtY v, with YtY in shared memory (symmetric, so column j is row j: lanes read
// consecutive words, no bank conflicts) and v staged in the warp's shared slot.
__device__ __forceinline__ void yty_times(const float* __restrict__ yty, float* __restrict__ stage, int lane,
                                          const float (&v)[PER_LANE], float (&out)[PER_LANE]) {
#pragma unroll
    for (int j = 0; j < PER_LANE; ++j) {
        int k = lane + j * WARP;
        if (k < FACTORS) stage[k] = v[j];
        out[j] = 0.f;
    }
    __syncwarp();
    for (int col = 0; col < FACTORS; ++col) {
        float vc = stage[col];
#pragma unroll
        for (int j = 0; j < PER_LANE; ++j) {
            int k = lane + j * WARP;
            if (k < FACTORS) out[j] += yty[col * FACTORS + k] * vc;
        }
    }
    __syncwarp();
}

// The sparse term of one stretch [start, end) of a row: with residual set,
//   sum_i [max(c_i, 0) - (|c_i| - 1) y_i.v] y_i   (the right-hand side minus the sparse part of A v),
// else sum_i (|c_i| - 1) (y_i.v) y_i             (the sparse part of A v).
// UNROLL interactions at a time: their factor rows are loaded and their dot products reduced
// side by side, so a warp keeps several loads in flight instead of waiting on each in turn.
#define UNROLL 4
template <typename T>
__device__ __forceinline__ void sparse_term(const int* __restrict__ indices, const float* __restrict__ data,
                                            const T* __restrict__ Y, i64 start, i64 end, int lane,
                                            const float (&v)[PER_LANE], bool residual, float (&acc)[PER_LANE]) {
    for (i64 base = start; base < end; base += WARP) {
        i64 mine = base + lane;
        int my_index = 0;
        float my_conf = 0.f;
        if (mine < end) {
            my_index = __ldg(indices + mine);
            my_conf = __ldg(data + mine);
        }
        const int count = (int)min((i64)WARP, end - base);
        for (int t = 0; t < count; t += UNROLL) {
            float y[UNROLL][PER_LANE], conf[UNROLL], dot[UNROLL];
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                const int item = __shfl_sync(FULL_MASK, my_index, (t + u) & (WARP - 1));
                conf[u] = __shfl_sync(FULL_MASK, my_conf, (t + u) & (WARP - 1));
                if (t + u < count) {  // the same for every lane
                    load_row(Y, item, lane, y[u]);
                } else {
#pragma unroll
                    for (int j = 0; j < PER_LANE; ++j) y[u][j] = 0.f;  // contributes nothing
                }
                dot[u] = 0.f;
#pragma unroll
                for (int j = 0; j < PER_LANE; ++j) dot[u] += y[u][j] * v[j];
            }
#pragma unroll
            for (int offset = WARP / 2; offset > 0; offset /= 2) {
#pragma unroll
                for (int u = 0; u < UNROLL; ++u) dot[u] += __shfl_xor_sync(FULL_MASK, dot[u], offset);
            }
#pragma unroll
            for (int u = 0; u < UNROLL; ++u) {
                const float positive = conf[u] > 0.f ? conf[u] : 0.f;
                float weight = (fabsf(conf[u]) - 1.f) * dot[u];
                if (residual) weight = positive - weight;
#pragma unroll
                for (int j = 0; j < PER_LANE; ++j) acc[j] += weight * y[u][j];
            }
        }
    }
}

// Light rows: a warp per row. rows lists them (longest first, for the tail's balance); empty
// rows (last in that order) are set to zero, as implicit does.
template <typename T>
__device__ __forceinline__ void light_rows(const i64* __restrict__ indptr, const int* __restrict__ indices,
                                           const float* __restrict__ data, const int* __restrict__ rows, int n_rows,
                                           T* __restrict__ X, const T* __restrict__ Y,
                                           const float* __restrict__ yty_global, int cg_steps) {
    extern __shared__ float shared[];
    float* yty = shared;
    const int warps = blockDim.x / WARP;
    const int warp = threadIdx.x / WARP;
    const int lane = threadIdx.x % WARP;
    float* stage = shared + FACTORS * FACTORS + warp * FACTORS;
    for (int k = threadIdx.x; k < FACTORS * FACTORS; k += blockDim.x) yty[k] = yty_global[k];
    __syncthreads();

    for (int slot = blockIdx.x * warps + warp; slot < n_rows; slot += gridDim.x * warps) {
        const i64 row = rows[slot];
        const i64 start = indptr[row], end = indptr[row + 1];
        float x[PER_LANE], r[PER_LANE], p[PER_LANE], ap[PER_LANE];
        if (start == end) {  // as implicit's GPU solver: a row with no interactions gets zero factors
#pragma unroll
            for (int j = 0; j < PER_LANE; ++j) x[j] = 0.f;
            store_row(X, row, lane, x);
            continue;
        }
        load_row(X, row, lane, x);

        yty_times(yty, stage, lane, x, ap);
#pragma unroll
        for (int j = 0; j < PER_LANE; ++j) r[j] = 0.f;
        sparse_term(indices, data, Y, start, end, lane, x, true, r);
#pragma unroll
        for (int j = 0; j < PER_LANE; ++j) {
            r[j] -= ap[j];
            p[j] = r[j];
        }
        float rsold = dot_lanes(r, r);
        if (rsold < CG_EPSILON) continue;

        for (int step = 0; step < cg_steps; ++step) {
            yty_times(yty, stage, lane, p, ap);
            sparse_term(indices, data, Y, start, end, lane, p, false, ap);
            float alpha = rsold / dot_lanes(p, ap);
#pragma unroll
            for (int j = 0; j < PER_LANE; ++j) {
                x[j] += alpha * p[j];
                r[j] -= alpha * ap[j];
            }
            float rsnew = dot_lanes(r, r);
            if (rsnew < CG_EPSILON) break;
            float beta = rsnew / rsold;
#pragma unroll
            for (int j = 0; j < PER_LANE; ++j) p[j] = r[j] + beta * p[j];
            rsold = rsnew;
        }
        store_row(X, row, lane, x);
    }
}

// Heavy rows, pass 1 of each CG step: a warp per chunk writes its partial sparse term.
// chunk_heavy[c] is the heavy row (an index into heavy_rows) the chunk belongs to; chunks of
// one heavy row are consecutive. With residual set, v is the row's current factors (X);
// else it is the row's search direction P[h]. Rows whose CG has converged are skipped.
// The heavy rows' CG state (R, P, rs) and the partials stay float whatever X and Y are stored in.
template <typename T>
__device__ __forceinline__ void chunk_partials(const int* __restrict__ indices, const float* __restrict__ data,
                                               const int* __restrict__ heavy_rows, const int* __restrict__ chunk_heavy,
                                               const i64* __restrict__ chunk_start, const i64* __restrict__ chunk_end,
                                               int n_chunks, const T* __restrict__ X, const float* __restrict__ P,
                                               const int* __restrict__ active, const T* __restrict__ Y, int residual,
                                               float* __restrict__ partials) {
    const int warps = blockDim.x / WARP;
    const int lane = threadIdx.x % WARP;
    for (int chunk = blockIdx.x * warps + threadIdx.x / WARP; chunk < n_chunks; chunk += gridDim.x * warps) {
        const int h = chunk_heavy[chunk];
        if (!residual && !active[h]) continue;
        float v[PER_LANE], acc[PER_LANE];
        if (residual)
            load_row(X, heavy_rows[h], lane, v);
        else
            load_row(P, h, lane, v);
#pragma unroll
        for (int j = 0; j < PER_LANE; ++j) acc[j] = 0.f;
        sparse_term(indices, data, Y, chunk_start[chunk], chunk_end[chunk], lane, v, residual != 0, acc);
        store_row(partials, chunk, lane, acc);
    }
}

__device__ __forceinline__ void sum_partials(const float* __restrict__ partials, int first, int last, int lane,
                                             float (&acc)[PER_LANE]) {
    for (int chunk = first; chunk < last; ++chunk) {
        float part[PER_LANE];
        load_row(partials, chunk, lane, part);
#pragma unroll
        for (int j = 0; j < PER_LANE; ++j) acc[j] += part[j];
    }
}

// Heavy rows, pass 2 of the residual: r = (sum of partials) - YtY x; p = r. A warp per row.
template <typename T>
__device__ __forceinline__ void heavy_residual(const int* __restrict__ heavy_rows, const int* __restrict__ chunk_first,
                                               int n_heavy, const T* __restrict__ X,
                                               const float* __restrict__ yty_global, const float* __restrict__ partials,
                                               float* __restrict__ R, float* __restrict__ P, float* __restrict__ rs,
                                               int* __restrict__ active) {
    extern __shared__ float shared[];
    float* yty = shared;
    const int warps = blockDim.x / WARP;
    const int warp = threadIdx.x / WARP;
    const int lane = threadIdx.x % WARP;
    float* stage = shared + FACTORS * FACTORS + warp * FACTORS;
    for (int k = threadIdx.x; k < FACTORS * FACTORS; k += blockDim.x) yty[k] = yty_global[k];
    __syncthreads();
    for (int h = blockIdx.x * warps + warp; h < n_heavy; h += gridDim.x * warps) {
        float x[PER_LANE], r[PER_LANE], ax[PER_LANE];
        load_row(X, heavy_rows[h], lane, x);
        yty_times(yty, stage, lane, x, ax);
#pragma unroll
        for (int j = 0; j < PER_LANE; ++j) r[j] = 0.f;
        sum_partials(partials, chunk_first[h], chunk_first[h + 1], lane, r);
#pragma unroll
        for (int j = 0; j < PER_LANE; ++j) r[j] -= ax[j];
        float rsold = dot_lanes(r, r);
        store_row(R, h, lane, r);
        store_row(P, h, lane, r);
        if (lane == 0) {
            rs[h] = rsold;
            active[h] = rsold >= CG_EPSILON;
        }
    }
}

// Heavy rows, pass 2 of a CG step: Ap = YtY p + (sum of partials); then the step itself.
template <typename T>
__device__ __forceinline__ void heavy_cg_step(const int* __restrict__ heavy_rows, const int* __restrict__ chunk_first,
                                              int n_heavy, T* __restrict__ X, const float* __restrict__ yty_global,
                                              const float* __restrict__ partials, float* __restrict__ R,
                                              float* __restrict__ P, float* __restrict__ rs, int* __restrict__ active) {
    extern __shared__ float shared[];
    float* yty = shared;
    const int warps = blockDim.x / WARP;
    const int warp = threadIdx.x / WARP;
    const int lane = threadIdx.x % WARP;
    float* stage = shared + FACTORS * FACTORS + warp * FACTORS;
    for (int k = threadIdx.x; k < FACTORS * FACTORS; k += blockDim.x) yty[k] = yty_global[k];
    __syncthreads();
    for (int h = blockIdx.x * warps + warp; h < n_heavy; h += gridDim.x * warps) {
        if (!active[h]) continue;
        const i64 row = heavy_rows[h];
        float x[PER_LANE], r[PER_LANE], p[PER_LANE], ap[PER_LANE];
        load_row(X, row, lane, x);
        load_row(R, h, lane, r);
        load_row(P, h, lane, p);
        yty_times(yty, stage, lane, p, ap);
        sum_partials(partials, chunk_first[h], chunk_first[h + 1], lane, ap);
        const float rsold = rs[h];
        float alpha = rsold / dot_lanes(p, ap);
#pragma unroll
        for (int j = 0; j < PER_LANE; ++j) {
            x[j] += alpha * p[j];
            r[j] -= alpha * ap[j];
        }
        float rsnew = dot_lanes(r, r);
        store_row(X, row, lane, x);
        store_row(R, h, lane, r);
        if (rsnew < CG_EPSILON) {
            if (lane == 0) active[h] = 0;
            continue;
        }
        float beta = rsnew / rsold;
#pragma unroll
        for (int j = 0; j < PER_LANE; ++j) p[j] = r[j] + beta * p[j];
        store_row(P, h, lane, p);
        if (lane == 0) rs[h] = rsnew;
    }
}

// The solve kernels, once per factor storage type: float, and bfloat16 with -DBF16_FACTORS.
extern "C" __global__ void cg_light(const i64* __restrict__ indptr, const int* __restrict__ indices,
                                    const float* __restrict__ data, const int* __restrict__ rows, int n_rows,
                                    float* __restrict__ X, const float* __restrict__ Y,
                                    const float* __restrict__ yty_global, int cg_steps) {
    light_rows(indptr, indices, data, rows, n_rows, X, Y, yty_global, cg_steps);
}

extern "C" __global__ void heavy_partials(const int* __restrict__ indices, const float* __restrict__ data,
                                          const int* __restrict__ heavy_rows, const int* __restrict__ chunk_heavy,
                                          const i64* __restrict__ chunk_start, const i64* __restrict__ chunk_end,
                                          int n_chunks, const float* __restrict__ X, const float* __restrict__ P,
                                          const int* __restrict__ active, const float* __restrict__ Y, int residual,
                                          float* __restrict__ partials) {
    chunk_partials(indices, data, heavy_rows, chunk_heavy, chunk_start, chunk_end, n_chunks, X, P, active, Y, residual,
                   partials);
}

extern "C" __global__ void heavy_start(const int* __restrict__ heavy_rows, const int* __restrict__ chunk_first,
                                       int n_heavy, const float* __restrict__ X, const float* __restrict__ yty_global,
                                       const float* __restrict__ partials, float* __restrict__ R, float* __restrict__ P,
                                       float* __restrict__ rs, int* __restrict__ active) {
    heavy_residual(heavy_rows, chunk_first, n_heavy, X, yty_global, partials, R, P, rs, active);
}

extern "C" __global__ void heavy_step(const int* __restrict__ heavy_rows, const int* __restrict__ chunk_first,
                                      int n_heavy, float* __restrict__ X, const float* __restrict__ yty_global,
                                      const float* __restrict__ partials, float* __restrict__ R, float* __restrict__ P,
                                      float* __restrict__ rs, int* __restrict__ active) {
    heavy_cg_step(heavy_rows, chunk_first, n_heavy, X, yty_global, partials, R, P, rs, active);
}

#ifdef BF16_FACTORS
extern "C" __global__ void cg_light_bf16(const i64* __restrict__ indptr, const int* __restrict__ indices,
                                         const float* __restrict__ data, const int* __restrict__ rows, int n_rows,
                                         __nv_bfloat16* __restrict__ X, const __nv_bfloat16* __restrict__ Y,
                                         const float* __restrict__ yty_global, int cg_steps) {
    light_rows(indptr, indices, data, rows, n_rows, X, Y, yty_global, cg_steps);
}

extern "C" __global__ void heavy_partials_bf16(const int* __restrict__ indices, const float* __restrict__ data,
                                               const int* __restrict__ heavy_rows, const int* __restrict__ chunk_heavy,
                                               const i64* __restrict__ chunk_start, const i64* __restrict__ chunk_end,
                                               int n_chunks, const __nv_bfloat16* __restrict__ X,
                                               const float* __restrict__ P, const int* __restrict__ active,
                                               const __nv_bfloat16* __restrict__ Y, int residual,
                                               float* __restrict__ partials) {
    chunk_partials(indices, data, heavy_rows, chunk_heavy, chunk_start, chunk_end, n_chunks, X, P, active, Y, residual,
                   partials);
}

extern "C" __global__ void heavy_start_bf16(const int* __restrict__ heavy_rows, const int* __restrict__ chunk_first,
                                            int n_heavy, const __nv_bfloat16* __restrict__ X,
                                            const float* __restrict__ yty_global, const float* __restrict__ partials,
                                            float* __restrict__ R, float* __restrict__ P, float* __restrict__ rs,
                                            int* __restrict__ active) {
    heavy_residual(heavy_rows, chunk_first, n_heavy, X, yty_global, partials, R, P, rs, active);
}

extern "C" __global__ void heavy_step_bf16(const int* __restrict__ heavy_rows, const int* __restrict__ chunk_first,
                                           int n_heavy, __nv_bfloat16* __restrict__ X,
                                           const float* __restrict__ yty_global, const float* __restrict__ partials,
                                           float* __restrict__ R, float* __restrict__ P, float* __restrict__ rs,
                                           int* __restrict__ active) {
    heavy_cg_step(heavy_rows, chunk_first, n_heavy, X, yty_global, partials, R, P, rs, active);
}
#endif

// Transpose, pass 1: interactions per column (64-bit counts: one column may exceed 2^31 in total).
extern "C" __global__ void count_columns(const int* __restrict__ indices, i64 nnz,
                                         unsigned long long* __restrict__ counts) {
    for (i64 n = blockIdx.x * (i64)blockDim.x + threadIdx.x; n < nnz; n += (i64)gridDim.x * blockDim.x)
        atomicAdd(counts + __ldg(indices + n), 1ull);
}

// Transpose, pass 2: a warp per source row scatters its entries to their columns' next free
// slots (cursor starts as the transposed indptr). The order inside a column depends on
// scheduling, which changes sums only at rounding level.
extern "C" __global__ void scatter_columns(const i64* __restrict__ indptr, const int* __restrict__ indices,
                                           const float* __restrict__ data, int n_rows,
                                           unsigned long long* __restrict__ cursor, int* __restrict__ out_indices,
                                           float* __restrict__ out_data) {
    const int warps = blockDim.x / WARP;
    const int lane = threadIdx.x % WARP;
    for (int row = blockIdx.x * warps + threadIdx.x / WARP; row < n_rows; row += gridDim.x * warps) {
        for (i64 n = indptr[row] + lane; n < indptr[row + 1]; n += WARP) {
            unsigned long long at = atomicAdd(cursor + __ldg(indices + n), 1ull);
            out_indices[at] = row;
            out_data[at] = __ldg(data + n);
        }
    }
}

// bm25 weighting on the GPU, pass 1: each row's total count (a warp per row).
extern "C" __global__ void row_sums(const i64* __restrict__ indptr, const float* __restrict__ data, int n_rows,
                                    float* __restrict__ sums) {
    const int warps = blockDim.x / WARP;
    const int lane = threadIdx.x % WARP;
    for (int row = blockIdx.x * warps + threadIdx.x / WARP; row < n_rows; row += gridDim.x * warps) {
        float total = 0.f;
        for (i64 n = indptr[row] + lane; n < indptr[row + 1]; n += WARP) total += __ldg(data + n);
        total = warp_sum(total);
        if (lane == 0) sums[row] = total;
    }
}

// bm25 weighting, pass 2, in place: c = 1 + alpha * r (k1 + 1) / (k1 norm_u + r) * idf_i, the
// formula of matrix.bm25 / matrix.confidence (norm_u: the row's length normalisation).
extern "C" __global__ void bm25_confidence(const i64* __restrict__ indptr, const int* __restrict__ indices,
                                           float* __restrict__ data, int n_rows, const float* __restrict__ norm,
                                           const float* __restrict__ idf, float k1, float alpha) {
    const int warps = blockDim.x / WARP;
    const int lane = threadIdx.x % WARP;
    for (int row = blockIdx.x * warps + threadIdx.x / WARP; row < n_rows; row += gridDim.x * warps) {
        const float scaled = k1 * norm[row];
        for (i64 n = indptr[row] + lane; n < indptr[row + 1]; n += WARP) {
            const float r = data[n];
            data[n] = 1.f + alpha * (r * (k1 + 1.f) / (scaled + r) * __ldg(idf + indices[n]));
        }
    }
}

// out = C v, a warp per row: the power iteration that sizes the automatic regularization
// (largest singular value of the confidence matrix) runs it on both orientations.
extern "C" __global__ void spmv_rows(const i64* __restrict__ indptr, const int* __restrict__ indices,
                                     const float* __restrict__ data, int n_rows, const float* __restrict__ v,
                                     float* __restrict__ out) {
    const int warps = blockDim.x / WARP;
    const int lane = threadIdx.x % WARP;
    for (int row = blockIdx.x * warps + threadIdx.x / WARP; row < n_rows; row += gridDim.x * warps) {
        float total = 0.f;
        for (i64 n = indptr[row] + lane; n < indptr[row + 1]; n += WARP)
            total += __ldg(data + n) * __ldg(v + indices[n]);
        total = warp_sum(total);
        if (lane == 0) out[row] = total;
    }
}
