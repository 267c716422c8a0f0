//! Reads and checks a GGUF file's header in pure Rust, before llama.cpp sees it.
//!
//! llama.cpp aborts the whole process on some malformed files, so every model
//! goes through [`inspect`] first: magic, version, the metadata table, the
//! tensor table, and the file size against the extent of every tensor. The
//! result also carries what the memory estimate needs (layer count, KV heads,
//! head dimension, weight bytes) and what the draft compatibility check needs
//! (vocabulary size and type, BOS/EOS).

mod checks;
mod reader;

use reader::Reader;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

/// `GGUF` read as a little-endian u32.
const MAGIC: u32 = 0x4655_4747;
/// Default data alignment when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;
/// Upper bound on any single string in the header. The largest real ones are
/// chat templates (tens of KiB); anything past this is corruption.
pub(crate) const MAX_STRING_BYTES: u64 = 16 << 20;
/// ggml's GGML_MAX_NAME: tensor names are shorter (llama.cpp rejects
/// longer ones, and a corrupt table yields them).
const MAX_NAME_BYTES: usize = 64;
/// Upper bound on tensor dimensions (ggml's GGML_MAX_DIMS).
const MAX_DIMS: u32 = 4;

/// Why a file is not a usable GGUF model.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read {path}: {reason}")]
    Io {
        path: PathBuf,
        reason: std::io::Error,
    },
    #[error("{path} is not a GGUF file (magic {found:#010x}, expected {MAGIC:#010x} \"GGUF\")")]
    BadMagic { path: PathBuf, found: u32 },
    #[error("{path}: unsupported GGUF version {version} (supported: 2, 3)")]
    BadVersion { path: PathBuf, version: u32 },
    #[error("{path}: header is truncated or corrupt at byte {offset}: {what}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        what: String,
    },
    #[error(
        "{path}: file is truncated: tensor '{tensor}' ends at byte {needed} but the file has {size} bytes"
    )]
    Truncated {
        path: PathBuf,
        tensor: String,
        needed: u64,
        size: u64,
    },
    #[error("{path}: {field}: {what}")]
    Inconsistent {
        path: PathBuf,
        /// The metadata key or tensor at fault.
        field: String,
        what: String,
    },
    #[error("{path}: tensor '{tensor}' has unknown ggml type {ggml_type}")]
    UnknownTensorType {
        path: PathBuf,
        tensor: String,
        ggml_type: u32,
    },
}

/// A metadata value we keep. Arrays keep only their length and item type
/// (GGUF's type code); the token texts come apart, from [`inspect_with_tokens`].
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array { len: u64, item_type: u32 },
}

/// What [`inspect`] learned about a model file.
#[derive(Debug, Clone)]
pub struct GgufInfo {
    pub path: PathBuf,
    pub version: u32,
    pub file_bytes: u64,
    pub tensor_count: u64,
    /// Sum of all tensor data sizes: what the weights occupy in memory.
    pub weight_bytes: u64,
    pub metadata: BTreeMap<String, MetaValue>,
    /// Where the file's parts begin: the metadata is at byte 24, then the
    /// tensor table, then (aligned) the tensor data.
    pub tensor_table_at: u64,
    pub data_at: u64,
}

impl GgufInfo {
    /// `general.architecture`, e.g. `llama` or `gemma3`.
    pub fn architecture(&self) -> Option<&str> {
        self.str("general.architecture")
    }

    pub fn str(&self, key: &str) -> Option<&str> {
        match self.metadata.get(key)? {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn int(&self, key: &str) -> Option<i64> {
        match self.metadata.get(key)? {
            MetaValue::Int(v) => Some(*v),
            _ => None,
        }
    }

    /// An architecture-scoped integer such as `{arch}.block_count`.
    pub fn arch_int(&self, suffix: &str) -> Option<i64> {
        self.int(&format!("{}.{suffix}", self.architecture()?))
    }

    /// Number of tokens in the vocabulary (length of `tokenizer.ggml.tokens`).
    pub fn vocab_size(&self) -> Option<u64> {
        match self.metadata.get("tokenizer.ggml.tokens")? {
            MetaValue::Array { len, .. } => Some(*len),
            _ => None,
        }
    }

    pub fn has_chat_template(&self) -> bool {
        self.str("tokenizer.chat_template").is_some()
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone)]
struct Tensor {
    name: String,
    /// ggml's order: the row length first.
    dims: Vec<u64>,
    offset: u64,
    bytes: u64,
}

/// (elements per block, bytes per block) of a ggml tensor type, as in ggml.c.
fn type_layout(ggml_type: u32) -> Option<(u64, u64)> {
    Some(match ggml_type {
        0 => (1, 4),      // F32
        1 => (1, 2),      // F16
        2 => (32, 18),    // Q4_0
        3 => (32, 20),    // Q4_1
        6 => (32, 22),    // Q5_0
        7 => (32, 24),    // Q5_1
        8 => (32, 34),    // Q8_0
        9 => (32, 36),    // Q8_1
        10 => (256, 84),  // Q2_K
        11 => (256, 110), // Q3_K
        12 => (256, 144), // Q4_K
        13 => (256, 176), // Q5_K
        14 => (256, 210), // Q6_K
        15 => (256, 292), // Q8_K
        16 => (256, 66),  // IQ2_XXS
        17 => (256, 74),  // IQ2_XS
        18 => (256, 98),  // IQ3_XXS
        19 => (256, 50),  // IQ1_S
        20 => (32, 18),   // IQ4_NL
        21 => (256, 110), // IQ3_S
        22 => (256, 82),  // IQ2_S
        23 => (256, 136), // IQ4_XS
        24 => (1, 1),     // I8
        25 => (1, 2),     // I16
        26 => (1, 4),     // I32
        27 => (1, 8),     // I64
        28 => (1, 8),     // F64
        29 => (256, 56),  // IQ1_M
        30 => (1, 2),     // BF16
        34 => (256, 54),  // TQ1_0
        35 => (256, 66),  // TQ2_0
        39 => (32, 17),   // MXFP4
        40 => (64, 36),   // NVFP4
        41 => (128, 18),  // Q1_0
        42 => (64, 18),   // Q2_0
        _ => return None,
    })
}

/// Reads and checks the header of the GGUF file at `path`.
///
/// # Errors
///
/// [`GgufError`] naming the file and what is wrong with it: unreadable, wrong
/// magic or version, a corrupt header, a tensor of unknown type, or a file
/// shorter than its tensor table says.
pub fn inspect(path: &Path) -> Result<GgufInfo, GgufError> {
    read(path).map(|(info, _)| info)
}

/// [`inspect`], also returning the token texts (`tokenizer.ggml.tokens`),
/// for the draft/target vocabulary check.
///
/// # Errors
///
/// As [`inspect`].
pub fn inspect_with_tokens(path: &Path) -> Result<(GgufInfo, Vec<String>), GgufError> {
    read(path)
}

fn read(path: &Path) -> Result<(GgufInfo, Vec<String>), GgufError> {
    let io = |reason| GgufError::Io {
        path: path.to_path_buf(),
        reason,
    };
    let file = File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    let mut r = Reader {
        inner: BufReader::with_capacity(1 << 16, file),
        pos: 0,
        size,
        path,
    };
    let magic = if size >= 4 { r.u32()? } else { 0 };
    if magic != MAGIC {
        return Err(GgufError::BadMagic {
            path: path.to_path_buf(),
            found: magic,
        });
    }
    let version = r.u32()?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::BadVersion {
            path: path.to_path_buf(),
            version,
        });
    }
    let tensor_count = r.u64()?;
    let kv_count = r.u64()?;
    // Every entry takes at least 8 bytes, which bounds plausible counts.
    if tensor_count > size / 8 || kv_count > size / 8 {
        return Err(r.corrupt(format!(
            "implausible counts: {tensor_count} tensors, {kv_count} metadata entries"
        )));
    }

    let mut metadata = BTreeMap::new();
    let mut tokens = Vec::new();
    for _ in 0..kv_count {
        let key = r.string()?;
        let ty = r.u32()?;
        let keep = (key == checks::TOKENS).then_some(&mut tokens);
        let value = r.value(ty, keep)?;
        metadata.insert(key, value);
    }
    let alignment = match metadata.get("general.alignment") {
        Some(MetaValue::Int(a)) if *a > 0 && (*a as u64).is_power_of_two() => *a as u64,
        Some(other) => return Err(r.corrupt(format!("bad general.alignment {other:?}"))),
        None => DEFAULT_ALIGNMENT,
    };

    let tensor_table_at = r.pos;
    let mut tensors = Vec::with_capacity(tensor_count as usize);
    for _ in 0..tensor_count {
        let name = r.string()?;
        if name.len() >= MAX_NAME_BYTES {
            return Err(r.corrupt(format!(
                "a tensor name of {} bytes (ggml allows {})",
                name.len(),
                MAX_NAME_BYTES - 1
            )));
        }
        let n_dims = r.u32()?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(r.corrupt(format!("tensor '{name}' has {n_dims} dimensions")));
        }
        let mut elements: u64 = 1;
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            let d = r.u64()?;
            dims.push(d);
            elements = elements
                .checked_mul(d)
                .ok_or_else(|| r.corrupt(format!("tensor '{name}' has an overflowing shape")))?;
        }
        let ggml_type = r.u32()?;
        let offset = r.u64()?;
        let (block, block_bytes) =
            type_layout(ggml_type).ok_or_else(|| GgufError::UnknownTensorType {
                path: path.to_path_buf(),
                tensor: name.clone(),
                ggml_type,
            })?;
        if !elements.is_multiple_of(block) {
            return Err(r.corrupt(format!(
                "tensor '{name}' has {elements} elements, not a multiple of its block size {block}"
            )));
        }
        tensors.push(Tensor {
            name,
            dims,
            offset,
            bytes: elements / block * block_bytes,
        });
    }

    let data_start = r.pos.div_ceil(alignment) * alignment;
    let mut weight_bytes = 0u64;
    // Each tensor's data follows the previous one's, padded to the
    // alignment (llama.cpp's gguf reader refuses anything else).
    let mut expected = 0u64;
    for t in &tensors {
        if t.offset != expected {
            return Err(GgufError::Inconsistent {
                path: path.to_path_buf(),
                field: t.name.clone(),
                what: format!(
                    "its data offset is {} but the tensors before it end at {expected} (aligned to {alignment})",
                    t.offset
                ),
            });
        }
        expected = expected.saturating_add(t.bytes.div_ceil(alignment).saturating_mul(alignment));
        let end = data_start
            .checked_add(t.offset)
            .and_then(|s| s.checked_add(t.bytes))
            .unwrap_or(u64::MAX);
        if end > size {
            return Err(GgufError::Truncated {
                path: path.to_path_buf(),
                tensor: t.name.clone(),
                needed: end,
                size,
            });
        }
        weight_bytes += t.bytes;
    }

    let info = GgufInfo {
        path: path.to_path_buf(),
        version,
        file_bytes: size,
        tensor_count,
        weight_bytes,
        metadata,
        tensor_table_at,
        data_at: data_start,
    };
    checks::model(&info, &tokens, &tensors)?;
    Ok((info, tokens))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Builds a minimal valid GGUF: one metadata string, one F32 tensor.
    pub(crate) fn tiny_gguf(tensor_elems: u64, truncate_data: bool) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes()); // tensors
        b.extend_from_slice(&1u64.to_le_bytes()); // kv
        let key = b"general.architecture";
        b.extend_from_slice(&(key.len() as u64).to_le_bytes());
        b.extend_from_slice(key);
        b.extend_from_slice(&8u32.to_le_bytes());
        b.extend_from_slice(&5u64.to_le_bytes());
        b.extend_from_slice(b"llama");
        let name = b"w";
        b.extend_from_slice(&(name.len() as u64).to_le_bytes());
        b.extend_from_slice(name);
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&tensor_elems.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes()); // F32
        b.extend_from_slice(&0u64.to_le_bytes()); // offset
        while b.len() % 32 != 0 {
            b.push(0);
        }
        let data = tensor_elems as usize * 4;
        b.extend(std::iter::repeat_n(
            0u8,
            if truncate_data { data / 2 } else { data },
        ));
        b
    }

    fn write(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn reads_a_minimal_file() {
        let f = write(&tiny_gguf(64, false));
        let info = inspect(f.path()).unwrap();
        assert_eq!(info.architecture(), Some("llama"));
        assert_eq!(info.weight_bytes, 256);
        assert_eq!(info.tensor_count, 1);
    }

    #[test]
    fn truncated_data_names_the_tensor() {
        let f = write(&tiny_gguf(64, true));
        let err = inspect(f.path()).unwrap_err().to_string();
        assert!(err.contains("truncated") && err.contains("'w'"), "{err}");
    }

    #[test]
    fn wrong_magic_is_rejected() {
        let f = write(b"not a model at all");
        let err = inspect(f.path()).unwrap_err();
        assert!(matches!(err, GgufError::BadMagic { .. }), "{err}");
    }

    #[test]
    fn truncated_header_is_corrupt_not_a_panic() {
        let full = tiny_gguf(64, false);
        for cut in [6, 20, 30, 45, 60] {
            let f = write(&full[..cut]);
            assert!(inspect(f.path()).is_err(), "cut at {cut} was accepted");
        }
    }

    #[test]
    fn a_tensor_name_past_ggmls_limit_is_corrupt() {
        let mut b = tiny_gguf(64, false);
        // The tensor's name "w" (length 1) follows the one metadata entry.
        let at = b
            .windows(9)
            .position(|w| w == b"\x01\0\0\0\0\0\0\0w")
            .unwrap();
        let long = "w".repeat(64);
        let mut named = b[..at].to_vec();
        named.extend_from_slice(&(long.len() as u64).to_le_bytes());
        named.extend_from_slice(long.as_bytes());
        named.extend_from_slice(&b[at + 9..]);
        b = named;
        let err = inspect(write(&b).path()).unwrap_err().to_string();
        assert!(
            err.contains("a tensor name of 64 bytes (ggml allows 63)"),
            "{err}"
        );
    }

    #[test]
    fn a_tensor_offset_out_of_place_is_named() {
        let mut b = tiny_gguf(64, false);
        // The tensor's offset is the last u64 of the table, just before
        // the padding that aligns the data.
        let at = b
            .windows(12)
            .position(|w| w == [1, 0, 0, 0, 64, 0, 0, 0, 0, 0, 0, 0])
            .unwrap()
            + 16;
        b[at] = 4;
        let err = inspect(write(&b).path()).unwrap_err().to_string();
        assert!(
            err.contains(
                "w: its data offset is 4 but the tensors before it end at 0 (aligned to 32)"
            ),
            "{err}"
        );
    }

    #[test]
    fn huge_string_length_is_corrupt() {
        let mut b = tiny_gguf(64, false);
        // The first key's length field starts at byte 24.
        b[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
        let f = write(&b);
        let err = inspect(f.path()).unwrap_err();
        assert!(matches!(err, GgufError::Corrupt { .. }), "{err}");
    }
}
