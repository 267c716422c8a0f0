//! A bounds-checked little-endian reader over a GGUF file.

use super::{GgufError, MetaValue, MAX_STRING_BYTES};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

/// A bounds-checked little-endian reader that knows the file size, so a
/// corrupt length field fails with a message instead of a huge allocation.
pub(super) struct Reader<'a> {
    pub inner: BufReader<File>,
    pub pos: u64,
    pub size: u64,
    pub path: &'a Path,
}

impl Reader<'_> {
    pub fn corrupt(&self, what: impl Into<String>) -> GgufError {
        GgufError::Corrupt {
            path: self.path.to_path_buf(),
            offset: self.pos,
            what: what.into(),
        }
    }

    pub fn bytes<const N: usize>(&mut self) -> Result<[u8; N], GgufError> {
        let mut buf = [0u8; N];
        if self.pos + N as u64 > self.size {
            return Err(self.corrupt("unexpected end of file"));
        }
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| self.corrupt(e.to_string()))?;
        self.pos += N as u64;
        Ok(buf)
    }

    pub fn u32(&mut self) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }

    pub fn u64(&mut self) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }

    pub fn skip(&mut self, n: u64) -> Result<(), GgufError> {
        if self.pos.checked_add(n).is_none_or(|end| end > self.size) {
            return Err(self.corrupt(format!("length {n} runs past the end of the file")));
        }
        self.inner
            .seek_relative(n as i64)
            .map_err(|e| self.corrupt(e.to_string()))?;
        self.pos += n;
        Ok(())
    }

    pub fn string(&mut self) -> Result<String, GgufError> {
        let len = self.u64()?;
        if len > MAX_STRING_BYTES || self.pos + len > self.size {
            return Err(self.corrupt(format!("string length {len} is implausible")));
        }
        let mut buf = vec![0u8; len as usize];
        self.inner
            .read_exact(&mut buf)
            .map_err(|e| self.corrupt(e.to_string()))?;
        self.pos += len;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// Reads one value of GGUF type `ty`; arrays are skipped, keeping the
    /// length, unless `keep` is given: then a string array's items land there.
    pub fn value(
        &mut self,
        ty: u32,
        keep: Option<&mut Vec<String>>,
    ) -> Result<MetaValue, GgufError> {
        Ok(match ty {
            0 => MetaValue::Int(self.bytes::<1>()?[0] as i64),
            1 => MetaValue::Int(self.bytes::<1>()?[0] as i8 as i64),
            2 => MetaValue::Int(u16::from_le_bytes(self.bytes()?) as i64),
            3 => MetaValue::Int(i16::from_le_bytes(self.bytes()?) as i64),
            4 => MetaValue::Int(self.u32()? as i64),
            5 => MetaValue::Int(i32::from_le_bytes(self.bytes()?) as i64),
            6 => MetaValue::Float(f32::from_le_bytes(self.bytes()?) as f64),
            7 => MetaValue::Bool(self.bytes::<1>()?[0] != 0),
            8 => MetaValue::Str(self.string()?),
            9 => {
                let item_ty = self.u32()?;
                let len = self.u64()?;
                if len > self.size {
                    return Err(self.corrupt(format!("array length {len} is implausible")));
                }
                match fixed_width(item_ty) {
                    Some(w) => self.skip(len * w)?,
                    None if item_ty == 8 => match keep {
                        Some(out) => {
                            out.reserve(len.min(1 << 20) as usize);
                            for _ in 0..len {
                                out.push(self.string()?);
                            }
                        }
                        None => {
                            for _ in 0..len {
                                let n = self.u64()?;
                                self.skip(n)?;
                            }
                        }
                    },
                    None => {
                        return Err(self.corrupt(format!("unsupported array item type {item_ty}")))
                    }
                }
                MetaValue::Array {
                    len,
                    item_type: item_ty,
                }
            }
            10 => MetaValue::Int(self.u64()? as i64),
            11 => MetaValue::Int(i64::from_le_bytes(self.bytes()?)),
            12 => MetaValue::Float(f64::from_le_bytes(self.bytes()?)),
            other => return Err(self.corrupt(format!("unknown metadata value type {other}"))),
        })
    }
}

/// Byte width of fixed-size GGUF value types (None for string and array).
pub(super) fn fixed_width(ty: u32) -> Option<u64> {
    match ty {
        0 | 1 | 7 => Some(1),
        2 | 3 => Some(2),
        4..=6 => Some(4),
        10..=12 => Some(8),
        _ => None,
    }
}
