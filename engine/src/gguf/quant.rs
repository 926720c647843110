//! ggml's quantized block formats and their dequantization to f32, written from the block
//! layouts: each value is computed with the same f32 operations in the same order as ggml's
//! reference (`dequantize_row_*`) and the `gguf` Python package, so results agree to the bit.

use half::f16;

/// The quantized types the engine reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quant {
    Q4_0,
    Q4_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

/// A ggml type id as ggml names it, for messages.
pub(super) fn ggml_type_name(id: u32) -> String {
    let name = match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        30 => "BF16",
        _ => return format!("#{id}"),
    };
    name.to_string()
}

/// Values per superblock of the K-quants.
const QK_K: usize = 256;

impl Quant {
    pub(super) fn from_ggml(id: u32) -> Option<Quant> {
        Some(match id {
            2 => Quant::Q4_0,
            3 => Quant::Q4_1,
            8 => Quant::Q8_0,
            12 => Quant::Q4K,
            13 => Quant::Q5K,
            14 => Quant::Q6K,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Quant::Q4_0 => "Q4_0",
            Quant::Q4_1 => "Q4_1",
            Quant::Q8_0 => "Q8_0",
            Quant::Q4K => "Q4_K",
            Quant::Q5K => "Q5_K",
            Quant::Q6K => "Q6_K",
        }
    }

    /// (values, bytes) of one block.
    pub fn block(self) -> (usize, usize) {
        match self {
            Quant::Q4_0 => (32, 18),
            Quant::Q4_1 => (32, 20),
            Quant::Q8_0 => (32, 34),
            Quant::Q4K => (QK_K, 144),
            Quant::Q5K => (QK_K, 176),
            Quant::Q6K => (QK_K, 210),
        }
    }

    /// The f32 values of `bytes` (whole blocks), computed as ggml computes them.
    pub fn dequantize(self, bytes: &[u8]) -> Vec<f32> {
        let mut out = Vec::with_capacity(bytes.len() / self.block().1 * self.block().0);
        for b in self.unpack(bytes) {
            out.extend(b.values());
        }
        out
    }

    /// `bytes` (whole blocks) as blocks of 32 small integers with their scales: every type
    /// here is one of those per 32 values, so the CPU kernels need one block format only.
    pub fn unpack(self, bytes: &[u8]) -> Vec<Block32> {
        let (values, size) = self.block();
        let mut out = Vec::with_capacity(bytes.len() / size * values / 32);
        for b in bytes.chunks_exact(size) {
            match self {
                Quant::Q4_0 => out.push(q4_0(b)),
                Quant::Q4_1 => out.push(q4_1(b)),
                Quant::Q8_0 => out.push(q8_0(b)),
                Quant::Q4K => q4_k(b, &mut out),
                Quant::Q5K => q5_k(b, &mut out),
                Quant::Q6K => q6_k(b, &mut out),
            }
        }
        out
    }
}

/// 32 values: `scale[h] · q (+ min)`, `h` the half (values 0–15, 16–31) a value is in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Block32 {
    pub q: [i8; 32],
    /// Equal but for Q6_K, whose scales cover 16 values each.
    pub scale: [f32; 2],
    /// Added after scaling: Q4_1's m, the K-quants' −dmin·m; none for the symmetric types (an
    /// added +0.0 would turn −0.0 into +0.0, which ggml does not do).
    pub min: Option<f32>,
}

impl Block32 {
    pub fn values(&self) -> impl Iterator<Item = f32> + '_ {
        self.q.iter().enumerate().map(|(j, q)| {
            let v = self.scale[j / 16] * *q as f32;
            match self.min {
                Some(m) => v + m,
                None => v,
            }
        })
    }
}

fn half(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// `d: f16, qs: [u8; 16]`: `(q - 8) * d`, low nibbles first.
fn q4_0(b: &[u8]) -> Block32 {
    let d = half(b, 0);
    let mut q = [0i8; 32];
    for (j, v) in b[2..18].iter().enumerate() {
        q[j] = (v & 0x0F) as i8 - 8;
        q[j + 16] = (v >> 4) as i8 - 8;
    }
    Block32 {
        q,
        scale: [d; 2],
        min: None,
    }
}

/// `d: f16, m: f16, qs: [u8; 16]`: `q * d + m`.
fn q4_1(b: &[u8]) -> Block32 {
    let (d, m) = (half(b, 0), half(b, 2));
    let mut q = [0i8; 32];
    for (j, v) in b[4..20].iter().enumerate() {
        q[j] = (v & 0x0F) as i8;
        q[j + 16] = (v >> 4) as i8;
    }
    Block32 {
        q,
        scale: [d; 2],
        min: Some(m),
    }
}

/// `d: f16, qs: [i8; 32]`: `q * d`.
fn q8_0(b: &[u8]) -> Block32 {
    let d = half(b, 0);
    Block32 {
        q: std::array::from_fn(|j| b[2 + j] as i8),
        scale: [d; 2],
        min: None,
    }
}

/// The 6-bit scale and min of sub-block `j` of a Q4_K / Q5_K superblock.
fn scale_min(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Sub-block `j` of a Q4_K / Q5_K superblock: ggml's `d·sc · q − dmin·m`.
fn k_block(b: &[u8], j: usize, q: [i8; 32]) -> Block32 {
    let (d, min) = (half(b, 0), half(b, 2));
    let (sc, m) = scale_min(j, &b[4..16]);
    Block32 {
        q,
        scale: [d * sc as f32; 2],
        min: Some(-(min * m as f32)),
    }
}

/// `d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]`: eight sub-blocks of 32.
fn q4_k(b: &[u8], out: &mut Vec<Block32>) {
    for (chunk, qs) in b[16..144].chunks_exact(32).enumerate() {
        out.push(k_block(
            b,
            2 * chunk,
            std::array::from_fn(|l| (qs[l] & 0x0F) as i8),
        ));
        out.push(k_block(
            b,
            2 * chunk + 1,
            std::array::from_fn(|l| (qs[l] >> 4) as i8),
        ));
    }
}

/// `d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]`: as Q4_K with a fifth bit
/// from `qh`.
fn q5_k(b: &[u8], out: &mut Vec<Block32>) {
    let qh = &b[16..48];
    for (chunk, ql) in b[48..176].chunks_exact(32).enumerate() {
        let (u1, u2) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
        let high = |l: usize, u: u8| if qh[l] & u != 0 { 16 } else { 0 };
        let lo = std::array::from_fn(|l| ((ql[l] & 0x0F) + high(l, u1)) as i8);
        let hi = std::array::from_fn(|l| ((ql[l] >> 4) + high(l, u2)) as i8);
        out.push(k_block(b, 2 * chunk, lo));
        out.push(k_block(b, 2 * chunk + 1, hi));
    }
}

/// `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16`: 6-bit values less 32, sixteen
/// sub-blocks of 16 with a scale each (`d·sc · q`).
fn q6_k(b: &[u8], out: &mut Vec<Block32>) {
    let d = half(b, 208);
    for half_block in 0..2 {
        let ql = &b[half_block * 64..half_block * 64 + 64];
        let qh = &b[128 + half_block * 32..128 + half_block * 32 + 32];
        let sc = &b[192 + half_block * 8..192 + half_block * 8 + 8];
        // Four runs of 32 values: low nibbles of ql[0..32], of ql[32..64], then high nibbles,
        // each with two bits of qh.
        for run in 0..4 {
            let q = std::array::from_fn(|l| {
                let low = ql[l + 32 * (run % 2)];
                let low = if run < 2 { low & 0x0F } else { low >> 4 };
                ((low | (((qh[l] >> (2 * run)) & 3) << 4)) as i32 - 32) as i8
            });
            let s = |k: usize| d * (sc[2 * run + k] as i8) as f32;
            out.push(Block32 {
                q,
                scale: [s(0), s(1)],
                min: None,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_decode_as_their_layouts_say() {
        // Q8_0: d = 0.5, values -128, 0, 127.
        let mut b = vec![0u8; 34];
        b[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
        b[2] = (-128i8) as u8;
        b[4] = 127;
        let y = Quant::Q8_0.dequantize(&b);
        assert_eq!((y[0], y[1], y[2]), (-64.0, 0.0, 63.5));
        // Q4_1: d = 2, m = -1, nibbles 0x1 (low) and 0xF (high) in byte 0.
        let mut b = vec![0u8; 20];
        b[..2].copy_from_slice(&f16::from_f32(2.0).to_le_bytes());
        b[2..4].copy_from_slice(&f16::from_f32(-1.0).to_le_bytes());
        b[4] = 0xF1;
        let y = Quant::Q4_1.dequantize(&b);
        assert_eq!((y[0], y[16], y[1]), (1.0, 29.0, -1.0));
        // Q4_0: nibble 0 is -8 d.
        let mut b = vec![0u8; 18];
        b[..2].copy_from_slice(&f16::from_f32(1.0).to_le_bytes());
        let y = Quant::Q4_0.dequantize(&b);
        assert_eq!(y[0], -8.0);
        assert_eq!(Quant::Q6K.dequantize(&[0u8; 420]).len(), 512);
    }
}
