//! Reading a GGUF header: the magic and version, the metadata (typed values, arrays of them),
//! and the tensor table, with the offset where tensor data starts. Every read is bounds-checked:
//! a short or malformed file gives a message naming what could not be read.

use std::collections::BTreeMap;

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::U64(n) => Some(*n as f64),
            Value::I64(n) => Some(*n as f64),
            Value::F64(n) => Some(*n),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
}

/// A tensor table entry as stored.
pub(super) struct RawTensor {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: u32,
    pub offset: u64,
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

/// Longest metadata array or string accepted: far above any real vocabulary, and it keeps a
/// corrupt length from asking for the whole address space.
const MOST: u64 = 1 << 28;

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or_else(|| format!("the file is truncated: it ends inside {what}"))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn string(&mut self, what: &str) -> Result<String, String> {
        let n = self.u64(what)?;
        if n > MOST {
            return Err(format!("{what} claims a length of {n} bytes"));
        }
        let b = self.take(n as usize, what)?;
        String::from_utf8(b.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    }

    fn value(&mut self, kind: u32, what: &str) -> Result<Value, String> {
        Ok(match kind {
            0 => Value::U64(self.take(1, what)?[0] as u64),
            1 => Value::I64(self.take(1, what)?[0] as i8 as i64),
            2 => {
                let b = self.take(2, what)?;
                Value::U64(u16::from_le_bytes([b[0], b[1]]) as u64)
            }
            3 => {
                let b = self.take(2, what)?;
                Value::I64(i16::from_le_bytes([b[0], b[1]]) as i64)
            }
            4 => Value::U64(self.u32(what)? as u64),
            5 => Value::I64(self.u32(what)? as i32 as i64),
            6 => Value::F64(f32::from_bits(self.u32(what)?) as f64),
            7 => Value::Bool(self.take(1, what)?[0] != 0),
            8 => Value::String(self.string(what)?),
            9 => {
                let item = self.u32(what)?;
                let n = self.u64(what)?;
                if n > MOST {
                    return Err(format!("{what} claims {n} items"));
                }
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(item, what)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(self.u64(what)? as i64),
            12 => Value::F64(f64::from_bits(self.u64(what)?)),
            other => return Err(format!("{what} has an unknown value type {other}")),
        })
    }
}

/// What a GGUF file's header holds.
pub(super) struct Header {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<RawTensor>,
    /// Where tensor data begins (tensor offsets count from here).
    pub data_start: u64,
}

pub(super) fn header(bytes: &[u8]) -> Result<Header, String> {
    let mut r = Reader { bytes, at: 0 };
    if r.take(4, "the magic number")? != b"GGUF" {
        return Err("not a GGUF file (it does not start with GGUF)".into());
    }
    let version = r.u32("the version")?;
    if version != 2 && version != 3 {
        return Err(format!(
            "GGUF version {version} is not supported (versions 2 and 3 are)"
        ));
    }
    let tensor_count = r.u64("the tensor count")?;
    let kv_count = r.u64("the metadata count")?;
    if tensor_count > MOST || kv_count > MOST {
        return Err("the header's counts are not plausible".into());
    }
    let mut metadata = BTreeMap::new();
    for i in 0..kv_count {
        let key = r.string(&format!("metadata key {i}"))?;
        let kind = r.u32(&format!("the type of {key}"))?;
        let value = r.value(kind, &key)?;
        metadata.insert(key, value);
    }
    let mut tensors = Vec::with_capacity(tensor_count as usize);
    for i in 0..tensor_count {
        let name = r.string(&format!("tensor {i}'s name"))?;
        let n = r.u32(&format!("{name}'s dimensions"))?;
        if n == 0 || n > 4 {
            return Err(format!("tensor {name} has {n} dimensions"));
        }
        let dims = (0..n)
            .map(|_| r.u64(&format!("{name}'s shape")))
            .collect::<Result<Vec<_>, _>>()?;
        let ggml_type = r.u32(&format!("{name}'s type"))?;
        let offset = r.u64(&format!("{name}'s offset"))?;
        tensors.push(RawTensor {
            name,
            dims,
            ggml_type,
            offset,
        });
    }
    let alignment = match metadata.get("general.alignment") {
        Some(Value::U64(a)) if *a > 0 && a.is_power_of_two() => *a,
        Some(other) => return Err(format!("general.alignment {other:?} is not a power of two")),
        None => 32,
    };
    let data_start = (r.at as u64).div_ceil(alignment) * alignment;
    Ok(Header {
        version,
        metadata,
        tensors,
        data_start,
    })
}
