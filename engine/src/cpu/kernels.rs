//! The CPU's numeric kernels. Every dot product, whichever tile it is computed in, uses one
//! fixed reduction order: eight lanes accumulated over the length in chunks of eight, the lanes
//! summed in a fixed tree, then the tail. A token's result therefore never depends on how many
//! other rows share its matrix product or where the tile boundaries fall, which is what makes a
//! sequence's output identical alone, batched, or recomputed after preemption. General GEMM
//! libraries pick block sizes from the matrix shape and so change the summation order with the
//! batch; that is why the products here are our own.

// SIMD intrinsics and the shared output pointer of a parallel product need `unsafe`; every
// block says why it holds.
#![allow(unsafe_code)]

use std::sync::OnceLock;

pub(super) const LANES: usize = 8;
/// Rows of W computed together: each x row is loaded once per chunk for all of them.
const NB: usize = 4;
/// Rows of X computed together: each W chunk is loaded once for all of them.
const MB: usize = 3;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Isa {
    Avx2Fma,
    Portable,
}

pub(super) fn isa() -> Isa {
    static ISA: OnceLock<Isa> = OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return Isa::Avx2Fma;
        }
        Isa::Portable
    })
}

/// The instruction set the kernels use on this machine, for logs and benchmarks.
pub fn isa_name() -> &'static str {
    match isa() {
        Isa::Avx2Fma => "avx2+fma",
        Isa::Portable => "portable",
    }
}

/// `out[i][j] = dot(xs[i], ws[j])` for up to `MB` x rows and `NB` w rows, each of length `k`.
/// `xs` and `ws` are row starts; `out` is written for the first `m` x rows and `n` w rows.
#[inline]
fn tile(x: &[f32], x_stride: usize, m: usize, w: &[f32], n: usize, k: usize) -> [[f32; NB]; MB] {
    // Real checks, not debug-only: the SIMD path below reads through raw pointers.
    assert!((1..=MB).contains(&m) && (1..=NB).contains(&n));
    assert!(x.len() >= (m - 1) * x_stride + k && w.len() >= n * k);
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa()` returned Avx2Fma only after runtime detection of both features, and
        // the slice lengths checked above cover every load the kernel makes.
        Isa::Avx2Fma => unsafe { avx2::tile(x, x_stride, m, w, n, k) },
        _ => tile_portable(x, x_stride, m, w, n, k),
    }
}

fn tile_portable(
    x: &[f32],
    x_stride: usize,
    m: usize,
    w: &[f32],
    n: usize,
    k: usize,
) -> [[f32; NB]; MB] {
    let mut out = [[0.0; NB]; MB];
    let chunks = k / LANES;
    for i in 0..m {
        let xr = &x[i * x_stride..i * x_stride + k];
        for (j, o) in out[i].iter_mut().enumerate().take(n) {
            let wr = &w[j * k..j * k + k];
            let mut acc = [0.0f32; LANES];
            for c in 0..chunks {
                let base = c * LANES;
                for l in 0..LANES {
                    acc[l] += xr[base + l] * wr[base + l];
                }
            }
            let mut s = hsum(acc);
            for t in chunks * LANES..k {
                s += xr[t] * wr[t];
            }
            *o = s;
        }
    }
    out
}

/// The fixed lane-summation tree shared by both instruction sets.
#[inline]
pub(super) fn hsum(a: [f32; LANES]) -> f32 {
    let b = [a[0] + a[4], a[1] + a[5], a[2] + a[6], a[3] + a[7]];
    let c = [b[0] + b[2], b[1] + b[3]];
    c[0] + c[1]
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{LANES, MB, NB, hsum};
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX2 and FMA; `x` must hold `m` rows of `k` at `x_stride`, `w` `n`
    /// rows of `k`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile(
        x: &[f32],
        x_stride: usize,
        m: usize,
        w: &[f32],
        n: usize,
        k: usize,
    ) -> [[f32; NB]; MB] {
        // Monomorphise on the tile shape so the accumulators live in registers.
        macro_rules! go {
            ($m:literal, $n:literal) => {
                // SAFETY: forwarded from this function's contract.
                unsafe { kernel::<$m, $n>(x, x_stride, w, k) }
            };
        }
        match (m, n) {
            (1, 1) => go!(1, 1),
            (1, 2) => go!(1, 2),
            (1, 3) => go!(1, 3),
            (1, 4) => go!(1, 4),
            (2, 1) => go!(2, 1),
            (2, 2) => go!(2, 2),
            (2, 3) => go!(2, 3),
            (2, 4) => go!(2, 4),
            (3, 1) => go!(3, 1),
            (3, 2) => go!(3, 2),
            (3, 3) => go!(3, 3),
            _ => go!(3, 4),
        }
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    // The tile indexes accumulators, x vectors and w rows together; ranges read best.
    #[allow(clippy::needless_range_loop)]
    unsafe fn kernel<const M: usize, const N: usize>(
        x: &[f32],
        x_stride: usize,
        w: &[f32],
        k: usize,
    ) -> [[f32; NB]; MB] {
        let chunks = k / LANES;
        let mut acc = [[_mm256_setzero_ps(); N]; M];
        let xp = x.as_ptr();
        let wp = w.as_ptr();
        for c in 0..chunks {
            let base = c * LANES;
            let mut xv = [_mm256_setzero_ps(); M];
            for (i, v) in xv.iter_mut().enumerate() {
                // SAFETY: row i of x spans i*x_stride..i*x_stride+k and base+8 <= k.
                *v = unsafe { _mm256_loadu_ps(xp.add(i * x_stride + base)) };
            }
            for j in 0..N {
                // SAFETY: row j of w spans j*k..j*k+k and base+8 <= k.
                let wv = unsafe { _mm256_loadu_ps(wp.add(j * k + base)) };
                for i in 0..M {
                    acc[i][j] = _mm256_fmadd_ps(xv[i], wv, acc[i][j]);
                }
            }
        }
        let mut out = [[0.0; NB]; MB];
        for i in 0..M {
            for j in 0..N {
                let mut lanes = [0.0f32; LANES];
                // SAFETY: `lanes` is 8 f32s, exactly one unaligned 256-bit store.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc[i][j]) };
                let mut s = hsum(lanes);
                for t in chunks * LANES..k {
                    s = x[i * x_stride + t].mul_add(w[j * k + t], s);
                }
                out[i][j] = s;
            }
        }
        out
    }
}

/// One dot product, with the same reduction order as every tile.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    tile(a, a.len(), 1, b, 1, a.len())[0][0]
}

/// A raw output pointer shared by the threads of one product; each writes disjoint elements.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: the pointer is only used to write disjoint elements of one live `&mut [f32]`, and the
// parallel scope that uses it ends before that borrow does.
unsafe impl Send for OutPtr {}
// SAFETY: as above; no element is read or written by two threads.
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// Through a method, so closures capture the whole (Send) wrapper, not the raw field.
    fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// `out[m][n] = dot(x[m], w[n])` for x `[rows][k]` and w `[cols][k]` (both row-major), split
/// over the pool's threads by blocks of w rows ([`over_tiles`]).
pub fn matmul(
    pool: &rayon::ThreadPool,
    x: &[f32],
    rows: usize,
    w: &[f32],
    k: usize,
    out: &mut [f32],
) {
    let cols = w.len() / k;
    // The output is written through a raw pointer: these bounds must hold in every build.
    assert_eq!(w.len(), cols * k);
    assert!(x.len() >= rows * k && out.len() >= rows * cols);
    // Blocks of w rows small enough to stay in cache while every x row passes over them, and
    // numerous enough to balance the threads.
    let block = (16 * 1024 / k.max(1)).clamp(NB, 64) / NB * NB;
    // Below a few tens of thousands of multiply-adds, handing work to threads costs more than
    // it saves (tiny models, the last rows of a step).
    let serial = rows * cols * k < 1 << 15;
    let tiling = Tiling {
        rows,
        cols,
        block,
        n: NB,
        serial,
    };
    over_tiles(pool, tiling, out, |m0, m, n0, n| {
        tile(&x[m0 * k..], k, m, &w[n0 * k..], n, k)
    });
}

/// How a product's `rows × cols` outputs are cut up: blocks of `block` columns, a task each on
/// the pool unless `serial`; each block in tiles of up to `M` rows by up to `n` columns.
pub(super) struct Tiling {
    pub rows: usize,
    pub cols: usize,
    pub block: usize,
    pub n: usize,
    pub serial: bool,
}

/// Every tile of `t` computed by `tile(m0, m, n0, n)` (its first `m` rows of `n` results are
/// used) and written into `out` (`rows × cols`, row-major). A column block belongs to one task,
/// so each weight row is read from memory once per call.
pub(super) fn over_tiles<const M: usize, const N: usize>(
    pool: &rayon::ThreadPool,
    t: Tiling,
    out: &mut [f32],
    tile: impl Fn(usize, usize, usize, usize) -> [[f32; N]; M] + Sync,
) {
    // The output is written through a raw pointer: these bounds must hold in every build.
    assert!(out.len() >= t.rows * t.cols && (1..=N).contains(&t.n) && t.block > 0);
    let blocks = t.cols.div_ceil(t.block);
    let ptr = OutPtr(out.as_mut_ptr());
    let run = |b: usize| {
        let n1 = ((b + 1) * t.block).min(t.cols);
        let mut m0 = 0;
        while m0 < t.rows {
            let m = M.min(t.rows - m0);
            let mut n0 = b * t.block;
            while n0 < n1 {
                let n = t.n.min(n1 - n0);
                let r = tile(m0, m, n0, n);
                for (i, row) in r.iter().enumerate().take(m) {
                    for (j, v) in row.iter().enumerate().take(n) {
                        // SAFETY: (m0+i) < rows and (n0+j) < cols, inside `out`; this block
                        // of columns belongs to this task alone.
                        unsafe { *ptr.at((m0 + i) * t.cols + n0 + j) = *v };
                    }
                }
                n0 += n;
            }
            m0 += m;
        }
    };
    if blocks == 1 || pool.current_num_threads() == 1 || t.serial {
        (0..blocks).for_each(run);
    } else {
        use rayon::prelude::*;
        pool.install(|| (0..blocks).into_par_iter().for_each(run));
    }
}

/// RMSNorm of each row of `x` (width `w.len()`) into `out`, as Hugging Face computes it in f32.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let h = weight.len();
    for (xr, or) in x.chunks_exact(h).zip(out.chunks_exact_mut(h)) {
        let ss = dot(xr, xr);
        let inv = 1.0 / (ss / h as f32 + eps).sqrt();
        for ((o, xv), wv) in or.iter_mut().zip(xr).zip(weight) {
            *o = wv * (xv * inv);
        }
    }
}

/// `out = silu(gate) * up` for rows laid out as `[gate | up]`.
pub fn silu_mul(gate_up: &[f32], inter: usize, out: &mut [f32]) {
    for (gu, o) in gate_up
        .chunks_exact(2 * inter)
        .zip(out.chunks_exact_mut(inter))
    {
        let (g, u) = gu.split_at(inter);
        for ((o, g), u) in o.iter_mut().zip(g).zip(u) {
            *o = g / (1.0 + (-g).exp()) * u;
        }
    }
}

pub fn add_in_place(acc: &mut [f32], delta: &[f32]) {
    for (a, d) in acc.iter_mut().zip(delta) {
        *a += d;
    }
}

/// Rotary embedding ("rotate half": element i pairs with i + d/2) of one head vector.
pub fn rope(v: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = v.len() / 2;
    let (a, b) = v.split_at_mut(half);
    for i in 0..half {
        let (x0, x1) = (a[i], b[i]);
        a[i] = x0 * cos[i] - x1 * sin[i];
        b[i] = x1 * cos[i] + x0 * sin[i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap()
    }

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32
                    / 16_777_216.0)
                    - 0.5
            })
            .collect()
    }

    #[test]
    fn matmul_matches_naive_sum() {
        let (rows, k, cols) = (7, 37, 13);
        let x = data(rows * k, 1);
        let w = data(cols * k, 2);
        let mut out = vec![0.0; rows * cols];
        matmul(&pool(2), &x, rows, &w, k, &mut out);
        for r in 0..rows {
            for c in 0..cols {
                let want: f64 = (0..k)
                    .map(|t| x[r * k + t] as f64 * w[c * k + t] as f64)
                    .sum();
                assert!((out[r * cols + c] as f64 - want).abs() < 1e-5, "{r},{c}");
            }
        }
    }

    #[test]
    fn a_row_is_bitwise_the_same_whatever_the_batch_and_threads() {
        let (k, cols) = (200, 70);
        let w = data(cols * k, 3);
        let x = data(9 * k, 4);
        let mut alone = vec![0.0; cols];
        matmul(&pool(1), &x[4 * k..5 * k], 1, &w, k, &mut alone);
        for (rows, threads) in [(9, 2), (5, 1), (8, 2)] {
            let mut all = vec![0.0; rows * cols];
            matmul(&pool(threads), &x, rows, &w, k, &mut all);
            assert_eq!(&all[4 * cols..5 * cols], &alone[..], "rows {rows}");
        }
        let d = dot(&x[4 * k..5 * k], &w[..k]);
        assert_eq!(d, alone[0]);
    }
}
