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

    /// The f32 values of `bytes` (whole blocks).
    pub fn dequantize(self, bytes: &[u8]) -> Vec<f32> {
        let (values, size) = self.block();
        let mut out = Vec::with_capacity(bytes.len() / size * values);
        for b in bytes.chunks_exact(size) {
            let start = out.len();
            out.resize(start + values, 0.0);
            let y = &mut out[start..];
            match self {
                Quant::Q4_0 => q4_0(b, y),
                Quant::Q4_1 => q4_1(b, y),
                Quant::Q8_0 => q8_0(b, y),
                Quant::Q4K => q4_k(b, y),
                Quant::Q5K => q5_k(b, y),
                Quant::Q6K => q6_k(b, y),
            }
        }
        out
    }
}

fn half(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// `d: f16, qs: [u8; 16]`: `(q - 8) * d`, low nibbles first.
fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = half(b, 0);
    for (j, q) in b[2..18].iter().enumerate() {
        y[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
        y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

/// `d: f16, m: f16, qs: [u8; 16]`: `q * d + m`.
fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (half(b, 0), half(b, 2));
    for (j, q) in b[4..20].iter().enumerate() {
        y[j] = (q & 0x0F) as f32 * d + m;
        y[j + 16] = (q >> 4) as f32 * d + m;
    }
}

/// `d: f16, qs: [i8; 32]`: `q * d`.
fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = half(b, 0);
    for (j, q) in b[2..34].iter().enumerate() {
        y[j] = (*q as i8) as f32 * d;
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

/// `d: f16, dmin: f16, scales: [u8; 12], qs: [u8; 128]`: eight sub-blocks of 32, each
/// `d·sc · q − dmin·m`.
fn q4_k(b: &[u8], y: &mut [f32]) {
    let (d, min) = (half(b, 0), half(b, 2));
    let scales = &b[4..16];
    let qs = &b[16..144];
    for (chunk, (q, out)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
        let (sc1, m1) = scale_min(2 * chunk, scales);
        let (sc2, m2) = scale_min(2 * chunk + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        for l in 0..32 {
            out[l] = d1 * (q[l] & 0x0F) as f32 - m1;
            out[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

/// `d: f16, dmin: f16, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128]`: as Q4_K with a fifth bit
/// from `qh`.
fn q5_k(b: &[u8], y: &mut [f32]) {
    let (d, min) = (half(b, 0), half(b, 2));
    let scales = &b[4..16];
    let qh = &b[16..48];
    let qs = &b[48..176];
    for (chunk, (ql, out)) in qs.chunks_exact(32).zip(y.chunks_exact_mut(64)).enumerate() {
        let (sc1, m1) = scale_min(2 * chunk, scales);
        let (sc2, m2) = scale_min(2 * chunk + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        let (u1, u2) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
        for l in 0..32 {
            let hi1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let hi2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            out[l] = d1 * ((ql[l] & 0x0F) + hi1) as f32 - m1;
            out[l + 32] = d2 * ((ql[l] >> 4) + hi2) as f32 - m2;
        }
    }
}

/// `ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16`: 6-bit values less 32, sixteen
/// sub-blocks of 16 with a scale each.
fn q6_k(b: &[u8], y: &mut [f32]) {
    let d = half(b, 208);
    for half_block in 0..2 {
        let ql = &b[half_block * 64..half_block * 64 + 64];
        let qh = &b[128 + half_block * 32..128 + half_block * 32 + 32];
        let sc = &b[192 + half_block * 8..192 + half_block * 8 + 8];
        let out = &mut y[half_block * 128..half_block * 128 + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            let s = |k: usize| d * (sc[is + k] as i8) as f32;
            out[l] = s(0) * q1 as f32;
            out[l + 32] = s(2) * q2 as f32;
            out[l + 64] = s(4) * q3 as f32;
            out[l + 96] = s(6) * q4 as f32;
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
