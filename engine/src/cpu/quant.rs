//! Products with quantized weights, which stay quantized in memory. Every GGUF type is held in
//! one of three block formats of 32 values: [`Q4Block`] (4-bit values with a scale and an
//! offset: Q4_0, Q4_1, Q4_K), [`Q80Block`] (8-bit values under one scale: Q8_0) and [`Q8Block`]
//! (8-bit values with a scale per 16 and an offset: Q5_K, Q6_K). Each activation row is quantized per 32 values to 8 bits as llama.cpp's Q8_1 does
//! ([`XBlock`]), so a block's product is integer arithmetic (AVX2: `maddubs` / `madd`), scaled
//! once.
//!
//! The order of summation is fixed as in `kernels`: eight lanes accumulated over a row's blocks,
//! the lanes summed in the same tree, then the offsets' sum, whichever tile computes it, so a
//! row's result does not depend on the batch or the threads.

// SIMD intrinsics and the shared output pointer need `unsafe`; every block says why it holds.
#![allow(unsafe_code)]

use crate::gguf::Block32;

use super::kernels::{Isa, LANES, Tiling, hsum, isa, over_tiles};

/// A weight block format the kernels read.
pub trait WeightBlock: Copy + Send + Sync + 'static {
    /// Value `j` (0–31) as a small integer.
    fn q(&self, j: usize) -> i32;
    /// The scale of value `j`.
    fn scale(&self, j: usize) -> f32;
    /// Added to every value after scaling.
    fn min(&self) -> f32;

    fn values(&self) -> impl Iterator<Item = f32> + '_ {
        (0..32).map(|j| self.scale(j) * self.q(j) as f32 + self.min())
    }

    #[cfg(target_arch = "x86_64")]
    /// The block prepared once for every activation row it meets.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    unsafe fn prepare(&self) -> avx2::Prepared;
}

/// 32 values `d · q + m`, `q` in 0–15, two to a byte (low nibbles first, as ggml stores them).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct Q4Block {
    pub qs: [u8; 16],
    pub d: f32,
    pub m: f32,
}

/// 32 values `scale[h] · q + min`, `h` the half (values 0–15, 16–31).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct Q8Block {
    pub q: [i8; 32],
    pub scale: [f32; 2],
    pub min: f32,
}

/// 32 values `d · q`: Q8_0's block, 36 bytes where [`Q8Block`] takes 44 (batch 1 reads every
/// weight once per token, so bytes are time).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C)]
pub struct Q80Block {
    pub q: [i8; 32],
    pub d: f32,
}

impl Q80Block {
    /// `b` when it has one scale and no offset.
    pub fn new(b: &Block32) -> Option<Q80Block> {
        (b.scale[0] == b.scale[1] && b.min.unwrap_or(0.0) == 0.0).then_some(Q80Block {
            q: b.q,
            d: b.scale[0],
        })
    }
}

impl Q4Block {
    /// `b` when its values fit four bits from `low` (−8 for Q4_0, 0 for Q4_1 and Q4_K) under
    /// one scale.
    pub fn new(b: &Block32, low: i8) -> Option<Q4Block> {
        let fits = b.q.iter().all(|q| (low..=low + 15).contains(q));
        if !fits || b.scale[0] != b.scale[1] {
            return None;
        }
        let nib = |j: usize| (b.q[j] - low) as u8;
        Some(Q4Block {
            qs: std::array::from_fn(|j| nib(j) | (nib(j + 16) << 4)),
            d: b.scale[0],
            m: b.min.unwrap_or(0.0) + b.scale[0] * f32::from(low),
        })
    }
}

impl From<Block32> for Q8Block {
    fn from(b: Block32) -> Q8Block {
        Q8Block {
            q: b.q,
            scale: b.scale,
            min: b.min.unwrap_or(0.0),
        }
    }
}

impl WeightBlock for Q4Block {
    fn q(&self, j: usize) -> i32 {
        i32::from(if j < 16 {
            self.qs[j] & 0x0F
        } else {
            self.qs[j - 16] >> 4
        })
    }
    fn scale(&self, _: usize) -> f32 {
        self.d
    }
    fn min(&self) -> f32 {
        self.m
    }
    #[cfg(target_arch = "x86_64")]
    unsafe fn prepare(&self) -> avx2::Prepared {
        // SAFETY: forwarded from this function's contract.
        unsafe { avx2::prepare_q4(self) }
    }
}

impl WeightBlock for Q8Block {
    fn q(&self, j: usize) -> i32 {
        i32::from(self.q[j])
    }
    fn scale(&self, j: usize) -> f32 {
        self.scale[j / 16]
    }
    fn min(&self) -> f32 {
        self.min
    }
    #[cfg(target_arch = "x86_64")]
    unsafe fn prepare(&self) -> avx2::Prepared {
        // SAFETY: forwarded from this function's contract.
        unsafe { avx2::prepare_q8(self) }
    }
}

impl WeightBlock for Q80Block {
    fn q(&self, j: usize) -> i32 {
        i32::from(self.q[j])
    }
    fn scale(&self, _: usize) -> f32 {
        self.d
    }
    fn min(&self) -> f32 {
        0.0
    }
    #[cfg(target_arch = "x86_64")]
    unsafe fn prepare(&self) -> avx2::Prepared {
        // SAFETY: forwarded from this function's contract.
        unsafe { avx2::prepare_q80(self) }
    }
}

/// An activation block: `x ≈ d · q`, with `s = d · Σq` for the weights' offsets.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[repr(C)]
pub struct XBlock {
    pub q: [i8; 32],
    pub d: f32,
    pub s: f32,
}

/// Rows of `x` (each a whole number of 32-value blocks) quantized into `out`, as ggml's
/// reference `quantize_row_q8_1` rounds.
pub fn quantize_rows(x: &[f32], out: &mut [XBlock]) {
    for (xb, o) in x.chunks_exact(32).zip(out) {
        let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (q, v) in o.q.iter_mut().zip(xb) {
            *q = (v * id).round() as i8;
            sum += i32::from(*q);
        }
        o.d = d;
        o.s = d * sum as f32;
    }
}

/// Activation rows and weight rows computed together: each block of either is loaded once for
/// all of the other's (eight accumulators fit the AVX2 registers with room to spare).
const MQ: usize = 4;
const NQ: usize = 2;

/// The instructions the quantized products use on this machine, for logs and benchmarks.
pub fn isa_name() -> &'static str {
    match isa() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma if avx2::has_vnni() => "avx512-vnni",
        Isa::Avx2Fma => "avx2",
        Isa::Portable => "portable",
    }
}

/// `out[i][j] = Σ_b ws[j][b] · xs[i][b]` for up to `MQ` activation rows and `NQ` weight rows.
fn dots<W: WeightBlock>(ws: &[&[W]], xs: &[&[XBlock]]) -> [[f32; NQ]; MQ] {
    assert!((1..=MQ).contains(&xs.len()) && (1..=NQ).contains(&ws.len()));
    let nb = ws[0].len();
    assert!(ws.iter().all(|w| w.len() == nb) && xs.iter().all(|x| x.len() >= nb));
    match isa() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa()` returned Avx2Fma only after runtime detection of both features; the
        // kernel reads whole blocks of slices whose lengths were checked above.
        Isa::Avx2Fma if avx2::has_vnni() => unsafe { avx2::dots_vnni(ws, xs) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2Fma => unsafe { avx2::dots(ws, xs) },
        _ => dots_portable(ws, xs),
    }
}

fn dots_portable<W: WeightBlock>(ws: &[&[W]], xs: &[&[XBlock]]) -> [[f32; NQ]; MQ] {
    let mut out = [[0f32; NQ]; MQ];
    for (x, o) in xs.iter().zip(&mut out) {
        for (w, o) in ws.iter().zip(o.iter_mut()) {
            let mut acc = [0f32; LANES];
            let mut offsets = 0f32;
            for (wb, xb) in w.iter().zip(x.iter()) {
                // Lane l holds values 4l..4l+4, as the AVX2 kernel's.
                for (l, a) in acc.iter_mut().enumerate() {
                    let sum: i32 = (4 * l..4 * l + 4)
                        .map(|j| wb.q(j) * i32::from(xb.q[j]))
                        .sum();
                    *a += wb.scale(4 * l) * (sum as f32 * xb.d);
                }
                offsets += wb.min() * xb.s;
            }
            *o = hsum(acc) + offsets;
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
pub mod avx2 {
    use super::{LANES, MQ, NQ, Q4Block, Q8Block, Q80Block, WeightBlock, XBlock, hsum};
    use std::arch::x86_64::*;

    /// A weight block ready for `maddubs`: unsigned bytes, the bytes whose signs the activations
    /// take (none for 4-bit blocks, whose values are not negative), the scale of each lane.
    #[derive(Clone, Copy)]
    pub struct Prepared {
        unsigned: __m256i,
        signs: Option<__m256i>,
        scale: __m256,
        min: f32,
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn prepare_q4(b: &Q4Block) -> Prepared {
        // SAFETY: `qs` is 16 bytes, one unaligned 128-bit load.
        let packed = unsafe { _mm_loadu_si128(b.qs.as_ptr().cast()) };
        let both = _mm256_set_m128i(_mm_srli_epi16(packed, 4), packed);
        Prepared {
            unsigned: _mm256_and_si256(both, _mm256_set1_epi8(0x0F)),
            signs: None,
            scale: _mm256_set1_ps(b.d),
            min: b.m,
        }
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn prepare_q80(b: &Q80Block) -> Prepared {
        // SAFETY: `q` is 32 bytes, one unaligned 256-bit load.
        let q = unsafe { _mm256_loadu_si256(b.q.as_ptr().cast()) };
        // As `prepare_q8`, under one scale.
        Prepared {
            unsigned: _mm256_sign_epi8(q, q),
            signs: Some(q),
            scale: _mm256_set1_ps(b.d),
            min: 0.0,
        }
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn prepare_q8(b: &Q8Block) -> Prepared {
        // SAFETY: `q` is 32 bytes, one unaligned 256-bit load.
        let q = unsafe { _mm256_loadu_si256(b.q.as_ptr().cast()) };
        Prepared {
            // |w| as unsigned bytes; the activations take w's signs. |x| ≤ 127 and |w| ≤ 128,
            // so a pair's sum fits an i16.
            unsigned: _mm256_sign_epi8(q, q),
            signs: Some(q),
            // Lanes 0–3 hold values 0–15, lanes 4–7 values 16–31.
            scale: _mm256_set_m128(_mm_set1_ps(b.scale[1]), _mm_set1_ps(b.scale[0])),
            min: b.min,
        }
    }

    /// A block's 32 products of unsigned weight bytes and signed activation bytes, summed four
    /// to a lane, as f32s. A pair of products fits an i16 (see `prepare_q8`), so `maddubs` does
    /// not saturate and both forms give the same integers.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    fn sums_avx2(w: __m256i, x: __m256i) -> __m256 {
        let pairs = _mm256_maddubs_epi16(w, x);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }

    /// As `sums_avx2`, in one instruction where the CPU has AVX-512 VNNI.
    #[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
    #[inline]
    fn sums_vnni(w: __m256i, x: __m256i) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(_mm256_setzero_si256(), w, x))
    }

    fn array<T: Copy, const K: usize>(s: &[T]) -> [T; K] {
        std::array::from_fn(|i| s[i])
    }

    /// The tile kernel and its dispatch on the tile's shape, compiled for one set of features
    /// with one way of summing a block.
    macro_rules! tiles {
        ($dots:ident, $kernel:ident, $features:literal, $sums:ident) => {
            /// # Safety
            /// The CPU must support the features named; every `ws[j]` holds the same number of
            /// blocks and every `xs[i]` at least that many; 1 ≤ `xs.len()` ≤ MQ,
            /// 1 ≤ `ws.len()` ≤ NQ.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $dots<W: WeightBlock>(
                ws: &[&[W]],
                xs: &[&[XBlock]],
            ) -> [[f32; NQ]; MQ] {
                // Monomorphised on the tile shape so the accumulators live in registers.
                // SAFETY: every arm forwards this function's contract.
                unsafe {
                    match (xs.len(), ws.len()) {
                        (1, 1) => $kernel::<W, 1, 1>(array(ws), array(xs)),
                        (1, 2) => $kernel::<W, 1, 2>(array(ws), array(xs)),
                        (2, 1) => $kernel::<W, 2, 1>(array(ws), array(xs)),
                        (2, 2) => $kernel::<W, 2, 2>(array(ws), array(xs)),
                        (3, 1) => $kernel::<W, 3, 1>(array(ws), array(xs)),
                        (3, 2) => $kernel::<W, 3, 2>(array(ws), array(xs)),
                        (4, 1) => $kernel::<W, 4, 1>(array(ws), array(xs)),
                        _ => $kernel::<W, 4, 2>(array(ws), array(xs)),
                    }
                }
            }

            #[target_feature(enable = $features)]
            #[inline]
            // The tile indexes accumulators, x blocks and w blocks together; ranges read best.
            #[allow(clippy::needless_range_loop)]
            unsafe fn $kernel<W: WeightBlock, const M: usize, const N: usize>(
                ws: [&[W]; N],
                xs: [&[XBlock]; M],
            ) -> [[f32; NQ]; MQ] {
                const { assert!(M <= MQ && N <= NQ) };
                let mut acc = [[_mm256_setzero_ps(); N]; M];
                let mut offsets = [[0f32; N]; M];
                let nb = ws[0].len();
                for b in 0..nb {
                    for j in 0..N {
                        // Weight rows are streamed from memory once, and the next tile's rows
                        // follow these in memory: ask for the same block of them, a tile ahead
                        // of use (a prefetch past the end is harmless; it never faults).
                        _mm_prefetch::<_MM_HINT_T0>(ws[j].as_ptr().wrapping_add(N * nb + b).cast());
                        // SAFETY: this function has the features `prepare` needs.
                        let w = unsafe { ws[j][b].prepare() };
                        for i in 0..M {
                            let xb = &xs[i][b];
                            // SAFETY: `q` is 32 bytes, one unaligned 256-bit load; `xs[i]` holds
                            // block b (activations stay in the first-level cache: loading
                            // again is cheap).
                            let xq = unsafe { _mm256_loadu_si256(xb.q.as_ptr().cast()) };
                            let x = match w.signs {
                                Some(signs) => _mm256_sign_epi8(xq, signs),
                                None => xq,
                            };
                            let sums = $sums(w.unsigned, x);
                            let xd = _mm256_set1_ps(xb.d);
                            acc[i][j] =
                                _mm256_fmadd_ps(w.scale, _mm256_mul_ps(sums, xd), acc[i][j]);
                            offsets[i][j] += w.min * xb.s;
                        }
                    }
                }
                let mut out = [[0f32; NQ]; MQ];
                for i in 0..M {
                    for j in 0..N {
                        let mut lanes = [0f32; LANES];
                        // SAFETY: `lanes` is 8 f32s, exactly one unaligned 256-bit store.
                        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc[i][j]) };
                        out[i][j] = hsum(lanes) + offsets[i][j];
                    }
                }
                out
            }
        };
    }

    tiles!(dots, kernel, "avx2,fma", sums_avx2);
    tiles!(
        dots_vnni,
        kernel_vnni,
        "avx2,fma,avx512vnni,avx512vl",
        sums_vnni
    );

    /// Whether the CPU has AVX-512 VNNI on 256-bit registers (checked once).
    pub(super) fn has_vnni() -> bool {
        static VNNI: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *VNNI.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512vnni")
                && std::arch::is_x86_feature_detected!("avx512vl")
        })
    }
}

/// `out[m][n] = x[m] · w[n]` for activations quantized as `xq` (`rows` rows of `nb` blocks) and
/// weights `w` (rows of `nb` blocks), split over the pool's threads by blocks of weight rows.
pub fn matmul<W: WeightBlock>(
    pool: &rayon::ThreadPool,
    xq: &[XBlock],
    rows: usize,
    w: &[W],
    nb: usize,
    out: &mut [f32],
) {
    let cols = w.len() / nb;
    // The output is written through a raw pointer: these bounds must hold in every build.
    assert_eq!(w.len(), cols * nb);
    assert!(xq.len() >= rows * nb && out.len() >= rows * cols);
    // Blocks of weight rows that stay in cache while the activation rows pass over them.
    let block = (32 * 1024 / (nb * size_of::<W>()).max(1)).clamp(NQ, 128) / NQ * NQ;
    let tiling = Tiling {
        rows,
        cols,
        block,
        // One activation row gains nothing from sharing weight loads: one weight row at a time
        // keeps the weights one sequential stream, which the hardware prefetcher follows best.
        n: if rows == 1 { 1 } else { NQ },
        serial: rows * cols * nb < 1 << 10,
    };
    over_tiles(pool, tiling, out, |m0, m, n0, n| {
        let xs: [&[XBlock]; MQ] = std::array::from_fn(|i| &xq[(m0 + i.min(m - 1)) * nb..][..nb]);
        let ws: [&[W]; NQ] = std::array::from_fn(|j| &w[(n0 + j.min(n - 1)) * nb..][..nb]);
        dots(&ws[..n], &xs[..m])
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::{Quant, quantize};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn pool(n: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap()
    }

    fn blocks(q: Quant, rows: usize, k: usize, rng: &mut ChaCha8Rng) -> Vec<Block32> {
        let w: Vec<f32> = (0..rows * k).map(|_| rng.random_range(-1.0..1.0)).collect();
        q.unpack(&quantize(q, &w).unwrap())
    }

    fn q8(b: &[Block32]) -> Vec<Q8Block> {
        b.iter().copied().map(Q8Block::from).collect()
    }

    fn q4(b: &[Block32], low: i8) -> Vec<Q4Block> {
        b.iter().map(|b| Q4Block::new(b, low).unwrap()).collect()
    }

    /// Every product within the bound that rounding the activations allows.
    fn check<W: WeightBlock>(w: &[W], k: usize, rng: &mut ChaCha8Rng, what: &str) {
        let (rows, nb) = (7, k / 32);
        let cols = w.len() / nb;
        let mut x: Vec<f32> = (0..rows * k).map(|_| rng.random_range(-2.0..2.0)).collect();
        x[5] = 40.0; // an outlier coarsens its block's steps
        let mut xq = vec![XBlock::default(); rows * nb];
        quantize_rows(&x, &mut xq);
        let mut out = vec![0.0; rows * cols];
        matmul(&pool(2), &xq, rows, w, nb, &mut out);
        for r in 0..rows {
            for c in 0..cols {
                let wv: Vec<f32> = w[c * nb..(c + 1) * nb].iter().flat_map(W::values).collect();
                let xr = &x[r * k..(r + 1) * k];
                let exact: f64 = xr.iter().zip(&wv).map(|(a, b)| *a as f64 * *b as f64).sum();
                // Rounding an activation to its block's step d moves it by at most d/2, so the
                // product by at most Σ (d_b / 2) Σ_b |w|; f32 arithmetic adds a little.
                let mut bound = 0f64;
                for (b, xb) in xq[r * nb..(r + 1) * nb].iter().enumerate() {
                    let wsum: f64 = wv[b * 32..(b + 1) * 32]
                        .iter()
                        .map(|v| v.abs() as f64)
                        .sum();
                    bound += xb.d as f64 / 2.0 * wsum;
                }
                let magnitude: f64 = xr
                    .iter()
                    .zip(&wv)
                    .map(|(a, b)| (*a as f64 * *b as f64).abs())
                    .sum();
                bound += 1e-6 * magnitude;
                let got = out[r * cols + c] as f64;
                assert!(
                    (got - exact).abs() <= bound,
                    "{what} [{r},{c}]: {got} vs {exact}, bound {bound}"
                );
            }
        }
    }

    #[test]
    fn products_match_an_f64_reference_within_the_activation_rounding() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let (k, cols) = (96, 13);
        let b = blocks(Quant::Q8_0, cols, k, &mut rng);
        check(&q8(&b), k, &mut rng, "Q8_0 as two scales");
        let one: Vec<Q80Block> = b.iter().map(|b| Q80Block::new(b).unwrap()).collect();
        check(&one, k, &mut rng, "Q8_0");
        let b = blocks(Quant::Q4_0, cols, k, &mut rng);
        check(&q8(&b), k, &mut rng, "Q4_0 as 8-bit");
        check(&q4(&b, -8), k, &mut rng, "Q4_0");
        let b = blocks(Quant::Q4_1, cols, k, &mut rng);
        check(&q4(&b, 0), k, &mut rng, "Q4_1");
        // Two scales per block (Q6_K's layout): random scales and values.
        let mut b = blocks(Quant::Q8_0, cols, k, &mut rng);
        for blk in &mut b {
            blk.scale = [rng.random_range(-0.1..0.1), rng.random_range(-0.1..0.1)];
            blk.min = Some(rng.random_range(-0.5..0.5));
        }
        check(&q8(&b), k, &mut rng, "two scales");
    }

    #[test]
    fn four_bit_blocks_hold_the_values_of_their_source() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        for (q, low) in [(Quant::Q4_0, -8), (Quant::Q4_1, 0)] {
            for b in blocks(q, 4, 64, &mut rng) {
                let four = Q4Block::new(&b, low).unwrap();
                let eight = Q8Block::from(b);
                for j in 0..32 {
                    assert_eq!(four.q(j) + i32::from(low), eight.q(j), "{q:?}");
                }
                let (x, y): (Vec<f32>, Vec<f32>) = (four.values().collect(), b.values().collect());
                for (a, e) in x.iter().zip(&y) {
                    assert!(
                        (a - e).abs() <= 1e-6 * e.abs().max(1.0),
                        "{q:?}: {a} vs {e}"
                    );
                }
            }
        }
        let wide = Block32 {
            q: [16; 32],
            scale: [1.0; 2],
            min: None,
        };
        assert_eq!(Q4Block::new(&wide, 0), None, "16 does not fit four bits");
    }

    #[test]
    fn a_row_is_bitwise_the_same_whatever_the_batch_and_threads() {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let (k, cols) = (160, 70);
        let nb = k / 32;
        let b = blocks(Quant::Q4_1, cols, k, &mut rng);
        let x: Vec<f32> = (0..9 * k).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut xq = vec![XBlock::default(); 9 * nb];
        quantize_rows(&x, &mut xq);
        fn same<W: WeightBlock>(w: &[W], xq: &[XBlock], nb: usize, cols: usize) {
            let mut alone = vec![0.0; cols];
            matmul(&pool(1), &xq[4 * nb..5 * nb], 1, w, nb, &mut alone);
            for (rows, threads) in [(9, 2), (5, 1), (6, 2)] {
                let mut all = vec![0.0; rows * cols];
                matmul(&pool(threads), xq, rows, w, nb, &mut all);
                assert_eq!(&all[4 * cols..5 * cols], &alone[..], "rows {rows}");
            }
        }
        same(&q4(&b, 0), &xq, nb, cols);
        same(&q8(&b), &xq, nb, cols);
    }

    #[test]
    fn portable_and_simd_kernels_agree_closely() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let b = blocks(Quant::Q4_1, 1, 256, &mut rng);
        let x: Vec<f32> = (0..256).map(|_| rng.random_range(-1.0..1.0)).collect();
        let mut xq = vec![XBlock::default(); 8];
        quantize_rows(&x, &mut xq);
        let (w4, w8) = (q4(&b, 0), q8(&b));
        for (a, b) in [
            (dots(&[&w4[..]], &[&xq]), dots_portable(&[&w4[..]], &[&xq])),
            (dots(&[&w8[..]], &[&xq]), dots_portable(&[&w8[..]], &[&xq])),
        ] {
            let (a, b) = (a[0][0], b[0][0]);
            assert!((a - b).abs() <= 1e-5 * a.abs().max(1.0), "{a} vs {b}");
        }
    }

    /// `maddubs` + `madd` and VNNI's `dpbusd` give the same integers, so the same floats: the
    /// pinned answers of real models do not depend on which the CPU has. Extreme values included
    /// (weights of −128 and 15, activations of ±127).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_and_vnni_kernels_agree_bitwise() {
        if !(matches!(isa(), Isa::Avx2Fma) && avx2::has_vnni()) {
            eprintln!("skipped: this CPU lacks AVX2 or AVX-512 VNNI");
            return;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let nb = 9;
        let x: Vec<XBlock> = (0..4 * nb)
            .map(|b| {
                let mut xb = XBlock::default();
                for (j, q) in xb.q.iter_mut().enumerate() {
                    *q = match (b + j) % 7 {
                        0 => 127,
                        1 => -127,
                        _ => rng.random_range(-127..=127),
                    };
                }
                xb.d = rng.random_range(0.001..0.1);
                xb.s = rng.random_range(-3.0..3.0);
                xb
            })
            .collect();
        let w8: Vec<Q8Block> = (0..2 * nb)
            .map(|b| Q8Block {
                q: std::array::from_fn(|j| match (b + j) % 5 {
                    0 => -128,
                    1 => 127,
                    _ => rng.random_range(-128..=127),
                }),
                scale: [rng.random_range(0.001..0.1), rng.random_range(0.001..0.1)],
                min: rng.random_range(-1.0..1.0),
            })
            .collect();
        let w4: Vec<Q4Block> = (0..2 * nb)
            .map(|b| Q4Block {
                qs: std::array::from_fn(|j| if (b + j) % 3 == 0 { 0xFF } else { rng.random() }),
                d: rng.random_range(0.001..0.1),
                m: rng.random_range(-1.0..1.0),
            })
            .collect();
        fn both<W: WeightBlock>(w: &[W], x: &[XBlock], nb: usize) {
            let ws: Vec<&[W]> = w.chunks(nb).collect();
            let xs: Vec<&[XBlock]> = x.chunks(nb).collect();
            for (m, n) in [(1, 1), (4, 2), (3, 1)] {
                // SAFETY: the test returned above unless the CPU has every feature; the slices
                // hold `nb` blocks each.
                let (a, b) = unsafe {
                    (
                        avx2::dots(&ws[..n], &xs[..m]),
                        avx2::dots_vnni(&ws[..n], &xs[..m]),
                    )
                };
                assert_eq!(
                    a.map(|r| r.map(f32::to_bits)),
                    b.map(|r| r.map(f32::to_bits))
                );
            }
        }
        both(&w8, &x, nb);
        both(&w4, &x, nb);
    }
}
