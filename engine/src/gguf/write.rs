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

/// `values` (a whole number of 32-value blocks) quantized as ggml's reference does, for the
/// types written here; `None` for the K-quants, which this writer does not make.
pub fn quantize(q: Quant, values: &[f32]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
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
