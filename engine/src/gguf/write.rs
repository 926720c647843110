//! Writing GGUF files: the test model as GGUF (`tokenmill model fixture --gguf TYPE`), so
//! that the loader, every quantized type and the tokenizer rebuilt from metadata are tested
//! without downloads. Quantization here is ggml's reference rounding for Q8_0, Q4_0 and Q4_1.

use std::io::Write;

use half::f16;

use super::{Quant, Value};

/// A tensor to write: its ggml dimensions (row length first), type id and bytes.
pub struct Out {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    pub data: Vec<u8>,
}

const ALIGNMENT: u64 = 32;

fn string(w: &mut Vec<u8>, s: &str) {
    w.extend((s.len() as u64).to_le_bytes());
    w.extend(s.as_bytes());
}

/// How a value is stored. Numbers take llama.cpp's types (u32 and i32 where the value fits,
/// f32 for every float, as its converters write them), because llama.cpp refuses a
/// hyperparameter of another width ("key llama.context_length has wrong type u64 but expected
/// type u32"). Reading widens them again.
#[derive(Clone, Copy, PartialEq)]
enum Stored {
    U32,
    U64,
    I32,
    I64,
    F32,
    Bool,
    String,
    Array,
}

impl Stored {
    fn of(v: &Value) -> Stored {
        match v {
            Value::U64(n) if u32::try_from(*n).is_ok() => Stored::U32,
            Value::U64(_) => Stored::U64,
            Value::I64(n) if i32::try_from(*n).is_ok() => Stored::I32,
            Value::I64(_) => Stored::I64,
            Value::F64(_) => Stored::F32,
            Value::Bool(_) => Stored::Bool,
            Value::String(_) => Stored::String,
            Value::Array(_) => Stored::Array,
        }
    }

    /// One type for all of an array's items: the widest any of them needs.
    fn of_items(items: &[Value]) -> Stored {
        let all = |s: Stored| items.iter().all(|v| Stored::of(v) == s);
        match items.first().map(Stored::of) {
            None => Stored::U32,
            Some(Stored::U32 | Stored::U64) if all(Stored::U32) => Stored::U32,
            Some(Stored::U32 | Stored::U64) => Stored::U64,
            Some(Stored::I32 | Stored::I64) if all(Stored::I32) => Stored::I32,
            Some(Stored::I32 | Stored::I64) => Stored::I64,
            Some(other) => other,
        }
    }

    fn id(self) -> u32 {
        match self {
            Stored::U32 => 4,
            Stored::I32 => 5,
            Stored::F32 => 6,
            Stored::Bool => 7,
            Stored::String => 8,
            Stored::Array => 9,
            Stored::U64 => 10,
            Stored::I64 => 11,
        }
    }
}

fn value(w: &mut Vec<u8>, v: &Value, stored: Stored) {
    match (v, stored) {
        (Value::U64(n), Stored::U32) => w.extend((*n as u32).to_le_bytes()),
        (Value::U64(n), _) => w.extend(n.to_le_bytes()),
        (Value::I64(n), Stored::I32) => w.extend((*n as i32).to_le_bytes()),
        (Value::I64(n), _) => w.extend(n.to_le_bytes()),
        (Value::F64(n), _) => w.extend((*n as f32).to_le_bytes()),
        (Value::Bool(b), _) => w.push(u8::from(*b)),
        (Value::String(s), _) => string(w, s),
        (Value::Array(items), _) => {
            let item = Stored::of_items(items);
            w.extend(item.id().to_le_bytes());
            w.extend((items.len() as u64).to_le_bytes());
            for v in items {
                value(w, v, item);
            }
        }
    }
}

/// The bytes of a GGUF version 3 file.
pub fn to_bytes(metadata: &[(String, Value)], tensors: &[Out]) -> Vec<u8> {
    let mut w = Vec::new();
    w.extend(b"GGUF");
    w.extend(3u32.to_le_bytes());
    w.extend((tensors.len() as u64).to_le_bytes());
    w.extend((metadata.len() as u64).to_le_bytes());
    for (key, v) in metadata {
        string(&mut w, key);
        let stored = Stored::of(v);
        w.extend(stored.id().to_le_bytes());
        value(&mut w, v, stored);
    }
    let mut offset = 0u64;
    for t in tensors {
        string(&mut w, &t.name);
        w.extend((t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            w.extend(d.to_le_bytes());
        }
        w.extend(t.ggml_type.to_le_bytes());
        w.extend(offset.to_le_bytes());
        offset = (offset + t.data.len() as u64).div_ceil(ALIGNMENT) * ALIGNMENT;
    }
    let pad = |w: &mut Vec<u8>| {
        while !(w.len() as u64).is_multiple_of(ALIGNMENT) {
            w.push(0);
        }
    };
    pad(&mut w);
    for t in tensors {
        w.extend(&t.data);
        pad(&mut w);
    }
    w
}

pub fn write(
    path: &std::path::Path,
    metadata: &[(String, Value)],
    tensors: &[Out],
) -> std::io::Result<()> {
    std::fs::File::create(path)?.write_all(&to_bytes(metadata, tensors))
}

/// ggml's type id of a quantized type.
pub fn ggml_id(q: Quant) -> u32 {
    match q {
        Quant::Q4_0 => 2,
        Quant::Q4_1 => 3,
        Quant::Q8_0 => 8,
        Quant::Q4K => 12,
        Quant::Q5K => 13,
        Quant::Q6K => 14,
    }
}

/// `values` (a whole number of the type's blocks) quantized: Q8_0, Q4_0 and Q4_1 as ggml's
/// reference does, to the byte; Q4_K by [`q4_k`]; `None` for Q5_K and Q6_K, which this writer
/// does not make.
pub fn quantize(q: Quant, values: &[f32]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    if q == Quant::Q4K {
        for x in values.chunks(256) {
            q4_k(x, &mut out);
        }
        return Some(out);
    }
    for x in values.chunks(32) {
        match q {
            Quant::Q8_0 => {
                let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16::from_f32(d).to_le_bytes());
                out.extend(x.iter().map(|v| (v * id).round() as i8 as u8));
            }
            Quant::Q4_0 => {
                let max = x
                    .iter()
                    .fold(0f32, |m, v| if v.abs() > m.abs() { *v } else { m });
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16::from_f32(d).to_le_bytes());
                let q = |v: f32| ((v * id + 8.5) as i8).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| q(x[j]) | (q(x[j + 16]) << 4)));
            }
            Quant::Q4_1 => {
                let min = x.iter().copied().fold(f32::INFINITY, f32::min);
                let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend(f16::from_f32(d).to_le_bytes());
                out.extend(f16::from_f32(min).to_le_bytes());
                let q = |v: f32| (((v - min) * id + 0.5) as i8).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| q(x[j]) | (q(x[j + 16]) << 4)));
            }
            Quant::Q4K | Quant::Q5K | Quant::Q6K => return None,
        }
    }
    Some(out)
}

/// One Q4_K superblock (256 values): eight sub-blocks of 32, each `d·sc · q − dmin·m` with a
/// 6-bit `sc` and `m`. The scale and min of a sub-block come from its own range (the min
/// never above 0, as ggml keeps it), then are rounded to 6 bits against the largest of the
/// superblock. That is the plain min–max choice, not ggml's search for the least squared
/// error (`make_qkx2_quants`): files written here are test fixtures, whose error only has to
/// be bounded; reading and computing with them is what must match ggml.
fn q4_k(x: &[f32], out: &mut Vec<u8>) {
    let mut scales = [0f32; 8];
    let mut mins = [0f32; 8];
    for (j, sub) in x.chunks_exact(32).enumerate() {
        let min = sub.iter().copied().fold(0f32, f32::min);
        let max = sub.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        scales[j] = (max - min) / 15.0;
        mins[j] = -min;
    }
    let max_scale = scales.iter().copied().fold(0f32, f32::max);
    let max_min = mins.iter().copied().fold(0f32, f32::max);
    let six_bits = |v: f32, max: f32| {
        if max > 0.0 {
            ((63.0 / max) * v).round().min(63.0) as u8
        } else {
            0
        }
    };
    let ls: [u8; 8] = std::array::from_fn(|j| six_bits(scales[j], max_scale));
    let lm: [u8; 8] = std::array::from_fn(|j| six_bits(mins[j], max_min));
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);
    out.extend(d.to_le_bytes());
    out.extend(dmin.to_le_bytes());
    // ggml's packing (`get_scale_min_k4` reads it back): sub-blocks 0–3 in the low six bits
    // of bytes 0–7, sub-blocks 4–7 as nibbles of bytes 8–11 with their top two bits above
    // those of 0–3.
    let mut packed = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            packed[j] = ls[j];
            packed[j + 4] = lm[j];
        } else {
            packed[j + 4] = (ls[j] & 0x0F) | ((lm[j] & 0x0F) << 4);
            packed[j - 4] |= (ls[j] >> 4) << 6;
            packed[j] |= (lm[j] >> 4) << 6;
        }
    }
    out.extend(packed);
    let q: Vec<[u8; 32]> = x
        .chunks_exact(32)
        .enumerate()
        .map(|(j, sub)| {
            let scale = d.to_f32() * f32::from(ls[j]);
            let offset = dmin.to_f32() * f32::from(lm[j]);
            std::array::from_fn(|l| {
                if scale == 0.0 {
                    return 0;
                }
                ((sub[l] + offset) / scale).round().clamp(0.0, 15.0) as u8
            })
        })
        .collect();
    // 32 bytes per pair of sub-blocks: the first in the low nibbles, the second in the high.
    for pair in q.chunks_exact(2) {
        out.extend((0..32).map(|l| pair[0][l] | (pair[1][l] << 4)));
    }
}
