//! A model file's identity: what makes a verdict or a saved state about
//! this file and not a replaced one.

use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

/// Bytes hashed at each end of a file by [`sample_hash`]: the whole header
/// and tensor table of any model, and the last tensors' data.
const SAMPLE_BYTES: u64 = 8 << 20;

/// Path (canonical), size and modification time of a file.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileIdentity {
    pub path: PathBuf,
    pub size: u64,
    pub modified_ns: u128,
}

impl FileIdentity {
    /// The identity of the file at `path`, None if it cannot be read.
    pub fn of(path: &Path) -> Option<FileIdentity> {
        let meta = std::fs::metadata(path).ok()?;
        let modified = meta.modified().ok()?.duration_since(UNIX_EPOCH).ok()?;
        Some(FileIdentity {
            path: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
            size: meta.len(),
            modified_ns: modified.as_nanos(),
        })
    }
}

/// xxh3 of a file's first and last 8 MiB (the whole file when smaller):
/// cheap on a model of any size, and it sees any change to the header, so
/// a file rewritten within the clock's resolution is still told apart.
///
/// # Errors
///
/// The file cannot be read.
pub fn sample_hash(path: &Path) -> std::io::Result<u64> {
    let mut file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = Vec::new();
    (&mut file).take(SAMPLE_BYTES).read_to_end(&mut buf)?;
    hasher.update(&buf);
    if size > SAMPLE_BYTES {
        let tail = SAMPLE_BYTES.min(size - SAMPLE_BYTES);
        file.seek(SeekFrom::Start(size - tail))?;
        buf.clear();
        file.take(tail).read_to_end(&mut buf)?;
        hasher.update(&buf);
    }
    hasher.update(&size.to_le_bytes());
    Ok(hasher.digest())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn a_changed_byte_changes_the_hash_but_not_the_size() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&[7u8; 4096]).unwrap();
        let before = sample_hash(f.path()).unwrap();
        let size = FileIdentity::of(f.path()).unwrap().size;
        f.as_file_mut().seek(SeekFrom::Start(100)).unwrap();
        f.write_all(&[8]).unwrap();
        assert_ne!(sample_hash(f.path()).unwrap(), before);
        assert_eq!(FileIdentity::of(f.path()).unwrap().size, size);
    }

    #[test]
    fn a_large_file_hashes_its_head_and_tail() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let len = (SAMPLE_BYTES * 3) as usize;
        f.write_all(&vec![1u8; len]).unwrap();
        let before = sample_hash(f.path()).unwrap();
        f.as_file_mut()
            .seek(SeekFrom::Start(len as u64 - 10))
            .unwrap();
        f.write_all(&[2]).unwrap();
        assert_ne!(sample_hash(f.path()).unwrap(), before, "tail change missed");
    }
}
