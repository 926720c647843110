// Tokenmill's CUDA kernels for Llama-family models, compiled by NVRTC when a worker starts.
//
// No #include: NVRTC on a serving machine may not find the toolkit's headers, so bf16 values are
// `unsigned short` bit patterns converted by hand. Activations and the residual stream are f32;
// weights and the paged KV cache are bf16. Matrices are row-major. Sizes are 32-bit ints; row
// offsets are computed in 64 bits so large caches and vocabularies cannot overflow.
//
// Batch invariance: every output is computed by one block in an order of operations fixed by
// the kernel (and at most blockDim), never by the grid, so a token's result is the same whichever
// other tokens share the launch.
//
// Launch configurations (T = tokens in the step, H = query heads, R = rows; every block size
// must be a multiple of 32, at most 1024; 256 / 128 are the sizes the host uses). No kernel
// uses dynamic shared memory: all shared arrays are static, so shared_mem_bytes = 0 always.
//   kernel              grid            block       dynamic shared (bytes)
//   embedding           (T)             256         0
//   rms_norm            (R)             256         0   (static 132 B)
//   add_rms_norm        (R)             256         0   (static 132 B)
//   qkv_rope_cache      (T)             128         0
//   paged_attention     (T, H)          128         0   (static 1792 B; head_dim <= 256, even)
//   silu_mul            (T)             256         0

typedef unsigned short bf16;

#define NEG_INF __int_as_float(0xff800000)
#define FULL_MASK 0xffffffffu

__device__ __forceinline__ float bf2f(bf16 x) {
    return __uint_as_float(((unsigned int)x) << 16);
}

// Round to nearest, ties to even; NaN stays a (quiet) NaN instead of rounding into infinity.
__device__ __forceinline__ bf16 f2bf(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (bf16)((u >> 16) | 0x40u);
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16)(u >> 16);
}

// Butterfly (xor) reductions: every lane ends with the same bits, because each step adds the
// same two values on both partners (a + b == b + a in IEEE arithmetic).
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) {
        v += __shfl_xor_sync(FULL_MASK, v, o);
    }
    return v;
}

// Sum over the block (blockDim a multiple of 32, at most 1024 = 32 warps), returned to every
// thread. The trailing barrier lets the caller reduce again at once without a race on `total`.
__device__ float block_sum(float v) {
    __shared__ float warp_part[32];
    __shared__ float total;
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    v = warp_sum(v);
    if (lane == 0) {
        warp_part[warp] = v;
    }
    __syncthreads();
    if (warp == 0) {
        float w = lane < (int)(blockDim.x >> 5) ? warp_part[lane] : 0.0f;
        w = warp_sum(w);
        if (lane == 0) {
            total = w;
        }
    }
    __syncthreads();
    const float r = total;
    __syncthreads();
    return r;
}

// out[t][:] = table[tokens[t]][:] as f32. The host range-checks token ids.
extern "C" __global__ void embedding(const bf16* table, const int* tokens, float* out, int hidden,
                                     int n_tokens) {
    const int t = blockIdx.x;
    if (t >= n_tokens) {
        return;
    }
    const bf16* row = table + (long long)tokens[t] * hidden;
    float* o = out + (long long)t * hidden;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        o[i] = bf2f(row[i]);
    }
}

// out = bf16(weight * (x / sqrt(mean(x^2) + eps))), one block per row, in the CPU backend's
// order of operations (1/sqrt rather than the approximate rsqrtf, for parity).
extern "C" __global__ void rms_norm(const float* x, const bf16* weight, bf16* out, int hidden,
                                    float eps) {
    const float* xr = x + (long long)blockIdx.x * hidden;
    bf16* o = out + (long long)blockIdx.x * hidden;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        ss += xr[i] * xr[i];
    }
    const float inv = 1.0f / sqrtf(block_sum(ss) / (float)hidden + eps);
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        o[i] = f2bf(bf2f(weight[i]) * (xr[i] * inv));
    }
}

// residual += delta, then out = rms_norm(residual). Each thread reads back only the elements it
// wrote itself, so the second pass needs no barrier beyond block_sum's.
extern "C" __global__ void add_rms_norm(float* residual, const float* delta, const bf16* weight,
                                        bf16* out, int hidden, float eps) {
    float* r = residual + (long long)blockIdx.x * hidden;
    const float* d = delta + (long long)blockIdx.x * hidden;
    bf16* o = out + (long long)blockIdx.x * hidden;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        const float v = r[i] + d[i];
        r[i] = v;
        ss += v * v;
    }
    const float inv = 1.0f / sqrtf(block_sum(ss) / (float)hidden + eps);
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        o[i] = f2bf(bf2f(weight[i]) * (r[i] * inv));
    }
}

// For token t (one block): add the q/k/v bias (Qwen2; null otherwise), rotate q and k at
// positions[t] ("rotate half": element i pairs with i + head_dim/2; cos/sin are
// [max_pos][head_dim/2]), write q out in f32 and k, v into the paged cache at slots[t]
// (cache layout [slot][n_kv_heads][head_dim], slot = block * block_size + offset). A negative
// slot skips the cache writes (padding rows).
extern "C" __global__ void qkv_rope_cache(const float* qkv, const float* bias, const float* cos,
                                          const float* sin, const int* positions,
                                          const int* slots, float* q_out, bf16* k_cache,
                                          bf16* v_cache, int n_heads, int n_kv_heads,
                                          int head_dim) {
    const int t = blockIdx.x;
    const int half = head_dim / 2;
    const int width = (n_heads + 2 * n_kv_heads) * head_dim;
    const float* row = qkv + (long long)t * width;
    // A padding row may carry a negative position: read the tables at 0 rather than before them.
    const int pos = max(positions[t], 0);
    const float* c = cos + (long long)pos * half;
    const float* s = sin + (long long)pos * half;
    const long long slot = slots[t];
    float* q = q_out + (long long)t * n_heads * head_dim;

    // Rotated pairs: heads 0..n_heads are q, n_heads..n_heads + n_kv_heads are k.
    const int pairs = (n_heads + n_kv_heads) * half;
    for (int idx = threadIdx.x; idx < pairs; idx += blockDim.x) {
        const int h = idx / half;
        const int i = idx - h * half;
        const int a_at = h * head_dim + i;
        const int b_at = a_at + half;
        float a = row[a_at];
        float b = row[b_at];
        if (bias != nullptr) {
            a += bias[a_at];
            b += bias[b_at];
        }
        const float ra = a * c[i] - b * s[i];
        const float rb = b * c[i] + a * s[i];
        if (h < n_heads) {
            q[a_at] = ra;
            q[b_at] = rb;
        } else if (slot >= 0) {
            bf16* k = k_cache + (slot * n_kv_heads + (h - n_heads)) * head_dim;
            k[i] = f2bf(ra);
            k[i + half] = f2bf(rb);
        }
    }
    if (slot < 0) {
        return;
    }
    const int v_at = (n_heads + n_kv_heads) * head_dim;
    bf16* v = v_cache + slot * n_kv_heads * head_dim;
    for (int idx = threadIdx.x; idx < n_kv_heads * head_dim; idx += blockDim.x) {
        float x = row[v_at + idx];
        if (bias != nullptr) {
            x += bias[v_at + idx];
        }
        v[idx] = f2bf(x);
    }
}

#define MAX_HEAD_DIM 256
// Positions per tile of the streaming softmax (the CPU backend uses the same 64).
#define ATT_TILE 64
// Output dimensions per thread: ceil(MAX_HEAD_DIM / 32) for the smallest block of 32 threads.
#define ATT_ACC (MAX_HEAD_DIM / 32)

// One block per (query token, head), prefill and decode alike: token t attends causally to
// positions 0..=token_pos[t] of sequence token_seq[t], whose KV rows are found through its block
// table. Positions are taken ATT_TILE at a time: a warp scores each position (lanes split
// head_dim, so K reads are coalesced), then every thread folds the tile into a running
// (max, sum, accumulator) softmax for the output dimensions it owns, in position order.
// Every sum's order depends only on the context length, not on the launch (or even blockDim).
// Requires head_dim even (bf16 pairs are loaded as 32-bit words) and <= MAX_HEAD_DIM.
// __launch_bounds__(1024) caps registers at 64 per thread (ptxas: about 44, no spills) so a
// 1024-thread block fits an SM's 64K registers; unbounded, ptxas used 72 and would fail that
// launch with "too many resources requested".
extern "C" __global__ void __launch_bounds__(1024)
    paged_attention(const float* q, const bf16* k_cache, const bf16* v_cache,
                    const int* block_tables, int max_blocks_per_seq, const int* token_seq,
                    const int* token_pos, bf16* out, int n_heads, int n_kv_heads, int head_dim,
                    int block_size, float scale) {
    __shared__ float2 q_s[MAX_HEAD_DIM / 2];  // q as (even, odd) pairs, matching the K loads
    __shared__ float score_s[ATT_TILE];
    __shared__ float weight_s[ATT_TILE];
    __shared__ int slot_s[ATT_TILE];
    const int t = blockIdx.x;
    const int h = blockIdx.y;
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    const int warps = blockDim.x >> 5;
    const int kv_h = h / (n_heads / n_kv_heads);
    const int context = token_pos[t] + 1;
    const long long row_stride = (long long)n_kv_heads * head_dim;  // elements per cache slot
    const int* table = block_tables + (long long)token_seq[t] * max_blocks_per_seq;
    bf16* o = out + ((long long)t * n_heads + h) * head_dim;
    if (context <= 0) {
        // A padding row (negative position): zeros rather than 0/0.
        for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
            o[i] = 0;
        }
        return;
    }
    const float* qr = q + ((long long)t * n_heads + h) * head_dim;
    for (int i = threadIdx.x; i < head_dim / 2; i += blockDim.x) {
        q_s[i] = make_float2(qr[2 * i], qr[2 * i + 1]);
    }
    __syncthreads();

    float acc[ATT_ACC];
#pragma unroll
    for (int k = 0; k < ATT_ACC; k++) {
        acc[k] = 0.0f;
    }
    float running_max = NEG_INF;
    float running_sum = 0.0f;
    const int half = head_dim >> 1;
    for (int base = 0; base < context; base += ATT_TILE) {
        const int n = min(ATT_TILE, context - base);
        // Scores: warp w takes tile positions w, w + warps, ...
        for (int j = warp; j < n; j += warps) {
            const int p = base + j;
            const int slot = table[p / block_size] * block_size + p % block_size;
            const unsigned int* kr =
                (const unsigned int*)(k_cache + (long long)slot * row_stride +
                                      (long long)kv_h * head_dim);
            float dot = 0.0f;
            for (int i = lane; i < half; i += 32) {
                const unsigned int kk = kr[i];  // k[2i] in the low half, k[2i+1] in the high
                const float2 qq = q_s[i];
                dot += qq.x * __uint_as_float(kk << 16);
                dot += qq.y * __uint_as_float(kk & 0xffff0000u);
            }
            dot = warp_sum(dot);
            if (lane == 0) {
                score_s[j] = dot * scale;
                slot_s[j] = slot;
            }
        }
        __syncthreads();
        // Every thread computes the same tile maximum (same values, same order).
        float tile_max = NEG_INF;
        for (int j = 0; j < n; j++) {
            tile_max = fmaxf(tile_max, score_s[j]);
        }
        const float new_max = fmaxf(running_max, tile_max);
        for (int j = threadIdx.x; j < n; j += blockDim.x) {
            weight_s[j] = expf(score_s[j] - new_max);
        }
        __syncthreads();
        // exp(-inf - finite) = 0 on the first tile, and acc starts at 0, so no NaN.
        const float rescale = expf(running_max - new_max);
        float tile_sum = 0.0f;
        for (int j = 0; j < n; j++) {
            tile_sum += weight_s[j];
        }
        running_sum = running_sum * rescale + tile_sum;
        running_max = new_max;
#pragma unroll
        for (int k = 0; k < ATT_ACC; k++) {
            const int dim = threadIdx.x + k * blockDim.x;
            if (dim < head_dim) {
                const bf16* vd = v_cache + (long long)kv_h * head_dim + dim;
                float a = acc[k] * rescale;
                for (int j = 0; j < n; j++) {
                    a += weight_s[j] * bf2f(vd[(long long)slot_s[j] * row_stride]);
                }
                acc[k] = a;
            }
        }
        __syncthreads();  // the next tile overwrites score_s, weight_s and slot_s
    }
    const float inv = 1.0f / running_sum;
#pragma unroll
    for (int k = 0; k < ATT_ACC; k++) {
        const int dim = threadIdx.x + k * blockDim.x;
        if (dim < head_dim) {
            o[dim] = f2bf(acc[k] * inv);
        }
    }
}

// out = bf16(silu(gate) * up) for rows laid out as [gate | up], one block per token.
extern "C" __global__ void silu_mul(const float* gate_up, bf16* out, int inter, int n_tokens) {
    const int t = blockIdx.x;
    if (t >= n_tokens) {
        return;
    }
    const float* g = gate_up + (long long)t * 2 * inter;
    const float* u = g + inter;
    bf16* o = out + (long long)t * inter;
    for (int i = threadIdx.x; i < inter; i += blockDim.x) {
        const float x = g[i];
        o[i] = f2bf(x / (1.0f + expf(-x)) * u[i]);
    }
}
