// Tokenmill's CUDA kernels for Llama-family models, compiled by NVRTC when a worker starts.
//
// No #include: NVRTC on a serving machine may not find the toolkit's headers, so bf16 values are
// `unsigned short` bit patterns converted by hand. Activations and the residual stream are f32;
// weights and the paged KV cache are bf16. Matrices are row-major. Every kernel computes each
// output with a fixed order of operations that does not depend on the grid, so a token's
// result is the same whichever other tokens share the launch (batch invariance).
//
// Launch configurations (T = tokens in the step, H = heads):
//   embedding        grid T        block 256   shared 0
//   rms_norm         grid T        block 256   shared 0 (static)
//   add_rms_norm     grid T        block 256   shared 0 (static)
//   qkv_rope_cache   grid T        block 128   shared 0
//   paged_attention  grid (T, H)   block 128   shared 0 (static, head_dim <= 256)
//   silu_mul         grid T        block 256   shared 0
// Any block size that is a multiple of 32 up to 1024 works for every kernel.

typedef unsigned short bf16;

#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float bf2f(bf16 x) {
    return __uint_as_float(((unsigned int)x) << 16);
}

// Round to nearest, ties to even; NaN stays a (quiet) NaN.
__device__ __forceinline__ bf16 f2bf(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (bf16)((u >> 16) | 0x40u);
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16)(u >> 16);
}

// Sum over the block, returned to every thread. Warp shuffles, then one warp over the warps'
// sums; the trailing barrier lets the caller reduce again straight away.
__device__ float block_sum(float v) {
    __shared__ float warp_sums[32];
    __shared__ float total;
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1) {
        v += __shfl_xor_sync(0xffffffffu, v, o);
    }
    if (lane == 0) {
        warp_sums[warp] = v;
    }
    __syncthreads();
    if (warp == 0) {
        const int warps = blockDim.x >> 5;
        float w = lane < warps ? warp_sums[lane] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) {
            w += __shfl_xor_sync(0xffffffffu, w, o);
        }
        if (lane == 0) {
            total = w;
        }
    }
    __syncthreads();
    const float r = total;
    __syncthreads();
    return r;
}

__device__ float block_max(float v) {
    __shared__ float warp_max[32];
    __shared__ float total;
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    for (int o = 16; o > 0; o >>= 1) {
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    }
    if (lane == 0) {
        warp_max[warp] = v;
    }
    __syncthreads();
    if (warp == 0) {
        const int warps = blockDim.x >> 5;
        float w = lane < warps ? warp_max[lane] : NEG_INF;
        for (int o = 16; o > 0; o >>= 1) {
            w = fmaxf(w, __shfl_xor_sync(0xffffffffu, w, o));
        }
        if (lane == 0) {
            total = w;
        }
    }
    __syncthreads();
    const float r = total;
    __syncthreads();
    return r;
}

// out[t][:] = table[tokens[t]][:] as f32.
extern "C" __global__ void embedding(const bf16* table, const int* tokens, float* out,
                                     int hidden, int n_tokens) {
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

// out = bf16(x / sqrt(mean(x^2) + eps) * weight), one block per row.
extern "C" __global__ void rms_norm(const float* x, const bf16* weight, bf16* out, int hidden,
                                    float eps) {
    const float* xr = x + (long long)blockIdx.x * hidden;
    bf16* o = out + (long long)blockIdx.x * hidden;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        ss += xr[i] * xr[i];
    }
    const float inv = rsqrtf(block_sum(ss) / hidden + eps);
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        o[i] = f2bf(xr[i] * inv * bf2f(weight[i]));
    }
}

// residual += delta, then out = rms_norm(residual). Each thread reads back only the elements
// it wrote, so no barrier is needed between the two passes.
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
    const float inv = rsqrtf(block_sum(ss) / hidden + eps);
    for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
        o[i] = f2bf(r[i] * inv * bf2f(weight[i]));
    }
}

// For token t: add the q/k/v bias (Qwen2; null otherwise), rotate q and k at positions[t]
// ("rotate half": element i pairs with i + head_dim/2), write q out in f32 and k, v into the
// paged cache at slots[t]. Cache layout: [slot][n_kv_heads][head_dim].
extern "C" __global__ void qkv_rope_cache(const float* qkv, const float* bias, const float* cos,
                                          const float* sin, const int* positions,
                                          const int* slots, float* q_out, bf16* k_cache,
                                          bf16* v_cache, int n_heads, int n_kv_heads,
                                          int head_dim) {
    const int t = blockIdx.x;
    const int half = head_dim / 2;
    const int width = (n_heads + 2 * n_kv_heads) * head_dim;
    const float* row = qkv + (long long)t * width;
    const float* c = cos + (long long)positions[t] * half;
    const float* s = sin + (long long)positions[t] * half;
    const long long slot = slots[t];

    // Rotated pairs of q (heads 0..n_heads) and k (heads n_heads..n_heads + n_kv_heads).
    const int pairs = (n_heads + n_kv_heads) * half;
    for (int idx = threadIdx.x; idx < pairs; idx += blockDim.x) {
        const int h = idx / half;
        const int i = idx % half;
        const int a_at = h * head_dim + i;
        const int b_at = a_at + half;
        float a = row[a_at];
        float b = row[b_at];
        if (bias != 0) {
            a += bias[a_at];
            b += bias[b_at];
        }
        const float ra = a * c[i] - b * s[i];
        const float rb = b * c[i] + a * s[i];
        if (h < n_heads) {
            float* q = q_out + (long long)t * n_heads * head_dim;
            q[a_at] = ra;
            q[b_at] = rb;
        } else {
            bf16* k = k_cache + (slot * n_kv_heads + (h - n_heads)) * head_dim;
            k[i] = f2bf(ra);
            k[i + half] = f2bf(rb);
        }
    }
    const int v_base = (n_heads + n_kv_heads) * head_dim;
    bf16* v = v_cache + slot * n_kv_heads * head_dim;
    for (int idx = threadIdx.x; idx < n_kv_heads * head_dim; idx += blockDim.x) {
        float x = row[v_base + idx];
        if (bias != 0) {
            x += bias[v_base + idx];
        }
        v[idx] = f2bf(x);
    }
}

#define MAX_HEAD_DIM 256
#define MAX_BLOCK 1024

// One block per (query token, head), for prefill and decode alike: token t attends causally to
// positions 0..=token_pos[t] of sequence token_seq[t], whose keys and values are found through
// its block table. Positions are taken in tiles of blockDim: each thread scores one position of
// the tile, the tile's weights are folded into a running (max, sum, accumulator) softmax, and
// each thread accumulates its own output dimensions over the tile in position order. The order
// of every sum depends only on the context length and blockDim, never on the launch's size.
extern "C" __global__ void paged_attention(const float* q, const bf16* k_cache,
                                           const bf16* v_cache, const int* block_tables,
                                           int max_blocks_per_seq, const int* token_seq,
                                           const int* token_pos, bf16* out, int n_heads,
                                           int n_kv_heads, int head_dim, int block_size,
                                           float scale) {
    __shared__ float q_s[MAX_HEAD_DIM];
    __shared__ float w_s[MAX_BLOCK];
    __shared__ long long slot_s[MAX_BLOCK];
    const int t = blockIdx.x;
    const int h = blockIdx.y;
    const int kv_h = h / (n_heads / n_kv_heads);
    const int context = token_pos[t] + 1;
    const int* table = block_tables + (long long)token_seq[t] * max_blocks_per_seq;
    const float* qr = q + ((long long)t * n_heads + h) * head_dim;
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
        q_s[i] = qr[i] * scale;
    }
    __syncthreads();

    // Each thread owns output dimensions threadIdx.x + k * blockDim.x (at most 8 for 128
    // threads and head_dim 256... at most ceil(256 / 32) = 8 for any block of 32 or more).
    float acc[8];
    for (int k = 0; k < 8; k++) {
        acc[k] = 0.0f;
    }
    float running_max = NEG_INF;
    float running_sum = 0.0f;
    for (int base = 0; base < context; base += blockDim.x) {
        const int p = base + threadIdx.x;
        float score = NEG_INF;
        if (p < context) {
            const long long slot = (long long)table[p / block_size] * block_size + p % block_size;
            slot_s[threadIdx.x] = slot;
            const bf16* kr = k_cache + (slot * n_kv_heads + kv_h) * head_dim;
            float dot = 0.0f;
            for (int i = 0; i < head_dim; i++) {
                dot += q_s[i] * bf2f(kr[i]);
            }
            score = dot;
        }
        const float tile_max = block_max(score);
        const float new_max = fmaxf(running_max, tile_max);
        const float weight = p < context ? __expf(score - new_max) : 0.0f;
        w_s[threadIdx.x] = weight;
        const float tile_sum = block_sum(weight);  // its barriers also publish w_s and slot_s
        const float rescale = __expf(running_max - new_max);
        running_sum = running_sum * rescale + tile_sum;
        running_max = new_max;
        const int n = min((int)blockDim.x, context - base);
        for (int k = 0; k < 8; k++) {
            const int dim = threadIdx.x + k * blockDim.x;
            if (dim < head_dim) {
                float a = acc[k] * rescale;
                for (int j = 0; j < n; j++) {
                    const bf16* vr = v_cache + (slot_s[j] * n_kv_heads + kv_h) * head_dim;
                    a += w_s[j] * bf2f(vr[dim]);
                }
                acc[k] = a;
            }
        }
        __syncthreads();  // the next tile overwrites w_s and slot_s
    }
    bf16* o = out + ((long long)t * n_heads + h) * head_dim;
    const float inv = 1.0f / running_sum;
    for (int k = 0; k < 8; k++) {
        const int dim = threadIdx.x + k * blockDim.x;
        if (dim < head_dim) {
            o[dim] = f2bf(acc[k] * inv);
        }
    }
}

// out = bf16(silu(gate) * up) for rows laid out as [gate | up].
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
