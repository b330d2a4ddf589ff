//! A strict reader for GGUF files, the format llama.cpp writes.
//!
//! Spec: <https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>.
//!
//! candle has its own GGUF reader, but it trusts the header: a corrupt or
//! hostile file that declares a 2⁶⁰-element array or a tensor past the end of
//! the file makes it allocate what the header claims, or read out of bounds.
//! This reader memory-maps the file and checks every length, count and offset
//! against the bytes actually there before it allocates or slices anything.
//! Tensor data is never copied here: [`GgufFile::tensor_bytes`] hands out a
//! slice of the map.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;

use crate::error::{EngineError, Result};

/// The magic bytes at the start of every GGUF file.
const MAGIC: &[u8; 4] = b"GGUF";
/// Alignment of the tensor data section when the file does not say.
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// `uint8`.
    U8(u8),
    /// `int8`.
    I8(i8),
    /// `uint16`.
    U16(u16),
    /// `int16`.
    I16(i16),
    /// `uint32`.
    U32(u32),
    /// `int32`.
    I32(i32),
    /// `uint64`.
    U64(u64),
    /// `int64`.
    I64(i64),
    /// `float32`.
    F32(f32),
    /// `float64`.
    F64(f64),
    /// `bool`.
    Bool(bool),
    /// A UTF-8 string (invalid UTF-8 is replaced, not rejected).
    String(String),
    /// An array of values of one type.
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }

    /// The value as a string slice, if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a bool, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The value as an array, if it is one.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where one tensor lives in the file.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// The tensor's name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions in row-major order (outermost first), i.e. reversed from
    /// the order ggml stores them in.
    pub dims: Vec<usize>,
    /// The raw ggml type id.
    pub ggml_type: u32,
    /// Absolute byte offset of the data in the file.
    pub offset: usize,
    /// Size of the data in bytes.
    pub size: usize,
}

/// An open, validated GGUF file.
pub struct GgufFile {
    path: PathBuf,
    map: memmap2::Mmap,
    version: u32,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<TensorInfo>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Opens and validates a GGUF file. Reads only the header; tensor data
    /// stays in the page cache until it is asked for.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| EngineError::io(&path, e))?;
        // SAFETY: the map is read-only. Another process truncating the file
        // while we run would fault, the same trade-off llama.cpp and candle
        // make to avoid copying multi-gigabyte weight files into memory.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| EngineError::io(&path, e))?;
        let header = parse(&map).map_err(|reason| EngineError::invalid(&path, reason))?;
        Ok(Self {
            path,
            map,
            version: header.version,
            metadata: header.metadata,
            tensors: header.tensors,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// All metadata, by key.
    pub fn metadata(&self) -> &BTreeMap<String, MetaValue> {
        &self.metadata
    }

    /// One metadata value.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    /// Takes one metadata value out (to free what is no longer needed,
    /// such as the tokenizer's arrays once the tokenizer is built).
    pub fn remove(&mut self, key: &str) -> Option<MetaValue> {
        self.metadata.remove(key)
    }

    /// A string metadata value.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(MetaValue::as_str)
    }

    /// An unsigned integer metadata value, or an error naming the key if it
    /// is present with another type.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| self.invalid(format!("metadata `{key}` is not an integer"))),
        }
    }

    /// A float metadata value, or an error naming the key if it is present
    /// with another type.
    pub fn get_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.invalid(format!("metadata `{key}` is not a number"))),
        }
    }

    /// All tensors, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The tensor called `name`, if present.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor (validated to lie inside the file).
    pub fn tensor_bytes(&self, info: &TensorInfo) -> &[u8] {
        // Offsets and sizes were checked against the map's length in `parse`.
        &self.map[info.offset..info.offset + info.size]
    }

    /// Drops this process's resident copy of a tensor's pages once its
    /// data has been copied out (the page cache keeps them; a later read
    /// faults them back in), so that loading does not hold the file and
    /// its copy at once: peak memory stays near the model's size. Whole
    /// pages inside the tensor only; failures are ignored (it is advice).
    pub fn release(&self, info: &TensorInfo) {
        self.release_start(info, info.size);
    }

    /// [`GgufFile::release`] for the first `len` bytes of a tensor's data
    /// (a loader that reads it from start to end drops what it has read).
    pub fn release_start(&self, info: &TensorInfo, len: usize) {
        const PAGE: usize = 4096;
        let start = info.offset.next_multiple_of(PAGE);
        let end = (info.offset + len.min(info.size)) / PAGE * PAGE;
        if end > start {
            // SAFETY: a read-only shared file mapping: dropped pages are
            // read again from the file on the next access, so any slice
            // still borrowed from the map keeps its contents.
            #[allow(unsafe_code)]
            let _ = unsafe {
                self.map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    start,
                    end - start,
                )
            };
        }
    }

    /// The candle type of a tensor, or a clear error for types candle cannot
    /// compute with (the IQ family, ternary types, ...).
    pub fn dtype_of(&self, info: &TensorInfo) -> Result<GgmlDType> {
        ggml_dtype(info.ggml_type).ok_or_else(|| EngineError::UnsupportedTensorType {
            path: self.path.clone(),
            tensor: info.name.clone(),
            dtype: ggml_type_name(info.ggml_type),
        })
    }

    /// Total size of all tensor data in bytes.
    pub fn tensor_data_size(&self) -> usize {
        self.tensors.iter().map(|t| t.size).sum()
    }

    pub(crate) fn invalid(&self, reason: impl Into<String>) -> EngineError {
        EngineError::invalid(&self.path, reason)
    }
}

/// The candle type for a ggml type id, when candle supports it.
pub fn ggml_dtype(id: u32) -> Option<GgmlDType> {
    Some(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

/// llama.cpp's name for a ggml type id (for error messages).
pub fn ggml_type_name(id: u32) -> String {
    const NAMES: [&str; 40] = [
        "F32",
        "F16",
        "Q4_0",
        "Q4_1",
        "Q4_2",
        "Q4_3",
        "Q5_0",
        "Q5_1",
        "Q8_0",
        "Q8_1",
        "Q2_K",
        "Q3_K",
        "Q4_K",
        "Q5_K",
        "Q6_K",
        "Q8_K",
        "IQ2_XXS",
        "IQ2_XS",
        "IQ3_XXS",
        "IQ1_S",
        "IQ4_NL",
        "IQ3_S",
        "IQ2_S",
        "IQ4_XS",
        "I8",
        "I16",
        "I32",
        "I64",
        "F64",
        "IQ1_M",
        "BF16",
        "Q4_0_4_4",
        "Q4_0_4_8",
        "Q4_0_8_8",
        "TQ1_0",
        "TQ2_0",
        "IQ4_NL_4_4",
        "IQ4_NL_4_8",
        "IQ4_NL_8_8",
        "MXFP4",
    ];
    NAMES
        .get(id as usize)
        .map_or_else(|| format!("unknown type {id}"), |n| (*n).to_string())
}

/// Bytes per block and elements per block of a ggml type, for the types whose
/// layout we know (used to validate sizes even for unsupported types).
fn block_layout(id: u32) -> Option<(usize, usize)> {
    if let Some(dtype) = ggml_dtype(id) {
        return Some((dtype.type_size(), dtype.block_size()));
    }
    // Integer and f64 tensors appear in some files' metadata-like tensors.
    match id {
        24 => Some((1, 1)),
        25 => Some((2, 1)),
        26 => Some((4, 1)),
        27 | 28 => Some((8, 1)),
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Parsing
// ---------------------------------------------------------------------------

#[derive(Debug)]
struct Header {
    version: u32,
    metadata: BTreeMap<String, MetaValue>,
    tensors: Vec<TensorInfo>,
}

/// A bounds-checked little-endian cursor over the mapped file.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

type ParseResult<T> = std::result::Result<T, String>;

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> ParseResult<&'a [u8]> {
        if n > self.remaining() {
            return Err(format!(
                "truncated: {what} needs {n} bytes at offset {} but the file ends at {}",
                self.pos,
                self.buf.len()
            ));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> ParseResult<[u8; N]> {
        let bytes = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> ParseResult<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> ParseResult<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A length or count that must be backed by at least `min_bytes_each`
    /// bytes per item in the rest of the file.
    fn count(&mut self, what: &str, min_bytes_each: usize) -> ParseResult<usize> {
        let n = self.u64(what)?;
        let n = usize::try_from(n).map_err(|_| format!("{what} {n} is too large"))?;
        let needed = n.checked_mul(min_bytes_each.max(1));
        if needed.is_none_or(|needed| needed > self.remaining()) {
            return Err(format!(
                "truncated or corrupt: {what} declares {n} items but only {} bytes remain in the file",
                self.remaining()
            ));
        }
        Ok(n)
    }

    fn string(&mut self, what: &str) -> ParseResult<String> {
        let len = self.count(what, 1)?;
        let bytes = self.take(len, what)?;
        Ok(String::from_utf8_lossy(bytes).into_owned())
    }

    fn value(&mut self, ty: u32, key: &str, depth: u32) -> ParseResult<MetaValue> {
        Ok(match ty {
            0 => MetaValue::U8(self.array::<1>(key)?[0]),
            1 => MetaValue::I8(i8::from_le_bytes(self.array(key)?)),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(key)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(key)?)),
            4 => MetaValue::U32(self.u32(key)?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(key)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(format!("metadata `{key}`: invalid bool byte {b}")),
            },
            8 => MetaValue::String(self.string(key)?),
            9 => {
                if depth > 2 {
                    return Err(format!("metadata `{key}`: arrays nested too deeply"));
                }
                let elem_ty = self.u32(key)?;
                let elem_size = min_value_size(elem_ty).ok_or_else(|| {
                    format!("metadata `{key}`: unknown array element type {elem_ty}")
                })?;
                let n = self.count(key, elem_size)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem_ty, key, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64(key)?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(key)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(key)?)),
            _ => return Err(format!("metadata `{key}`: unknown value type {ty}")),
        })
    }
}

/// The fewest bytes a value of this type can occupy (for count checks).
fn min_value_size(ty: u32) -> Option<usize> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 => 8,     // a string is at least its u64 length
        9 => 4 + 8, // an array is at least its type and count
        10..=12 => 8,
        _ => return None,
    })
}

fn parse(buf: &[u8]) -> ParseResult<Header> {
    let mut c = Cursor { buf, pos: 0 };
    let magic = c
        .take(4, "magic")
        .map_err(|_| "file is empty or too short to be GGUF".to_string())?;
    if magic != MAGIC {
        return Err("not a GGUF file (bad magic bytes)".into());
    }
    let version = c.u32("version")?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(
                "GGUF version 1 is obsolete; convert the model with a current llama.cpp".into(),
            );
        }
        v if v.swap_bytes() <= 3 => return Err("big-endian GGUF files are not supported".into()),
        v => return Err(format!("unsupported GGUF version {v}")),
    }
    // Each tensor info is at least: name length (8) + n_dims (4) + one dim
    // (8) + type (4) + offset (8).
    let n_tensors = c.u64("tensor count")?;
    let n_kv = c.count("metadata count", 8 + 4)?;

    let mut metadata = BTreeMap::new();
    for _ in 0..n_kv {
        let key = c.string("metadata key")?;
        let ty = c.u32(&key)?;
        let value = c.value(ty, &key, 0)?;
        metadata.insert(key, value);
    }

    let n_tensors = usize::try_from(n_tensors)
        .ok()
        .filter(|n| n.checked_mul(32).is_some_and(|b| b <= c.remaining()))
        .ok_or_else(|| {
            format!("header declares {n_tensors} tensors, more than the file can hold")
        })?;
    let mut raw = Vec::with_capacity(n_tensors);
    for _ in 0..n_tensors {
        let name = c.string("tensor name")?;
        let n_dims = c.u32(&name)?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(format!(
                "tensor `{name}` has {n_dims} dimensions (1 to {MAX_DIMS} allowed)"
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let d = c.u64(&name)?;
            dims.push(
                usize::try_from(d)
                    .map_err(|_| format!("tensor `{name}`: dimension {d} too large"))?,
            );
        }
        dims.reverse();
        let ggml_type = c.u32(&name)?;
        let offset = c.u64(&name)?;
        raw.push((name, dims, ggml_type, offset));
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => v
            .as_u64()
            .filter(|a| a.is_power_of_two() && *a >= 8)
            .ok_or_else(|| format!("general.alignment {v:?} is not a power of two ≥ 8"))?,
    };
    let data_start = (c.pos as u64).div_ceil(alignment) * alignment;

    let mut tensors = Vec::with_capacity(raw.len());
    for (name, dims, ggml_type, rel_offset) in raw {
        let size = tensor_size(&name, &dims, ggml_type)?;
        if !rel_offset.is_multiple_of(alignment) {
            return Err(format!(
                "tensor `{name}` is not aligned to {alignment} bytes"
            ));
        }
        let offset = data_start
            .checked_add(rel_offset)
            .and_then(|o| usize::try_from(o).ok())
            .ok_or_else(|| format!("tensor `{name}`: offset {rel_offset} out of range"))?;
        if offset.checked_add(size).is_none_or(|end| end > buf.len()) {
            return Err(format!(
                "tensor `{name}` ({size} bytes at offset {offset}) extends past the end of the file ({} bytes): the file is truncated or corrupt",
                buf.len()
            ));
        }
        tensors.push(TensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            size,
        });
    }
    Ok(Header {
        version,
        metadata,
        tensors,
    })
}

/// Size in bytes of a tensor's data, with overflow and block-alignment checks.
fn tensor_size(name: &str, dims: &[usize], ggml_type: u32) -> ParseResult<usize> {
    // A type whose layout we do not know cannot be loaded anyway; keep the
    // header readable (so the error can name the tensor) and give it no data.
    let Some((type_size, block_size)) = block_layout(ggml_type) else {
        return Ok(0);
    };
    let row = *dims.last().unwrap_or(&0);
    if !row.is_multiple_of(block_size) {
        return Err(format!(
            "tensor `{name}`: row length {row} is not a multiple of the {}-element block of {}",
            block_size,
            ggml_type_name(ggml_type)
        ));
    }
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .and_then(|elems| (elems / block_size).checked_mul(type_size))
        .ok_or_else(|| format!("tensor `{name}`: size overflows"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal GGUF writer for tests: metadata as (key, type, payload).
    pub(crate) fn build(
        meta: &[(&str, u32, Vec<u8>)],
        tensors: &[(&str, &[u64], u32, u64)],
        data: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(meta.len() as u64).to_le_bytes());
        for (k, ty, payload) in meta {
            out.extend_from_slice(&(k.len() as u64).to_le_bytes());
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(payload);
        }
        for (name, dims, ty, off) in tensors {
            out.extend_from_slice(&(name.len() as u64).to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims.iter() {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&ty.to_le_bytes());
            out.extend_from_slice(&off.to_le_bytes());
        }
        while out.len() % 32 != 0 {
            out.push(0);
        }
        out.extend_from_slice(data);
        out
    }

    fn string_payload(s: &str) -> Vec<u8> {
        let mut p = (s.len() as u64).to_le_bytes().to_vec();
        p.extend_from_slice(s.as_bytes());
        p
    }

    #[test]
    fn parses_a_small_file() {
        let data = vec![0u8; 4 * 8];
        let buf = build(
            &[("general.architecture", 8, string_payload("llama"))],
            &[("w", &[8, 1], 0, 0)],
            &data,
        );
        let h = parse(&buf).expect("valid");
        assert_eq!(h.metadata["general.architecture"].as_str(), Some("llama"));
        assert_eq!(h.tensors[0].dims, vec![1, 8]);
        assert_eq!(h.tensors[0].size, 32);
    }

    #[test]
    fn rejects_tensor_past_end_without_allocating() {
        // A header that claims a 2^40-element tensor in a tiny file.
        let buf = build(&[], &[("huge", &[1 << 20, 1 << 20], 0, 0)], &[0u8; 64]);
        let err = parse(&buf).expect_err("must fail");
        assert!(err.contains("extends past the end"), "{err}");
    }

    #[test]
    fn rejects_huge_array_count() {
        let mut payload = 4u32.to_le_bytes().to_vec(); // u32 elements
        payload.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
        let buf = build(&[("x", 9, payload)], &[], &[]);
        let err = parse(&buf).expect_err("must fail");
        assert!(err.contains("declares"), "{err}");
    }

    #[test]
    fn rejects_huge_string_and_tensor_counts() {
        let mut buf = build(&[], &[], &[]);
        buf[8..16].copy_from_slice(&u64::MAX.to_le_bytes()); // tensor count
        assert!(parse(&buf).is_err());
        let mut buf = build(&[("k", 8, (u64::MAX).to_le_bytes().to_vec())], &[], &[]);
        buf.truncate(buf.len());
        assert!(parse(&buf).is_err());
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let buf = build(
            &[
                ("general.architecture", 8, string_payload("llama")),
                ("llama.block_count", 4, 2u32.to_le_bytes().to_vec()),
            ],
            &[("a", &[32], 8, 0), ("b", &[4], 0, 64)],
            &[1u8; 80], // ends exactly where tensor `b` does
        );
        assert!(parse(&buf).is_ok());
        for n in 0..buf.len() - 1 {
            assert!(parse(&buf[..n]).is_err(), "truncated to {n} bytes parsed");
        }
    }

    #[test]
    fn rejects_bad_magic_version_and_dims() {
        assert!(parse(b"GGML\x03\0\0\0").is_err());
        let mut buf = build(&[], &[], &[]);
        buf[4..8].copy_from_slice(&1u32.to_le_bytes());
        assert!(parse(&buf).unwrap_err().contains("version 1"));
        let buf = build(&[], &[("t", &[1, 1, 1, 1, 1], 0, 0)], &[0u8; 32]);
        assert!(parse(&buf).unwrap_err().contains("dimensions"));
        // Q8_0 row of 33 elements is not a whole number of blocks.
        let buf = build(&[], &[("q", &[33], 8, 0)], &[0u8; 64]);
        assert!(parse(&buf).unwrap_err().contains("multiple"));
    }

    #[test]
    fn names_unsupported_types() {
        assert_eq!(ggml_type_name(16), "IQ2_XXS");
        assert_eq!(ggml_type_name(99), "unknown type 99");
        assert!(ggml_dtype(16).is_none());
        assert_eq!(ggml_dtype(12), Some(GgmlDType::Q4K));
    }
}
