//! The bank's embeddings, kept on disk so a server embeds the bank once per
//! model and bank, not at every start.
//!
//! One file per (model, bank) pair, named by a hash of both, under
//! `$XDG_CACHE_HOME/xnai-model-router/assist` (else `~/.cache/...`):
//! an 8-byte magic, the key, the number of vectors and their dimension,
//! then the vectors as little-endian f32. A file that is short, of another
//! key or shape, or unreadable is ignored and written again; a write goes
//! to a temporary file renamed into place, so a reader never sees half of
//! one.

use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"XNAIEMB1";
const HEADER: usize = 8 + 8 + 4 + 4;

/// The folder cache files go in.
pub fn default_dir() -> PathBuf {
    crate::config::validate::xdg_dir("XDG_CACHE_HOME", ".cache").join("xnai-model-router/assist")
}

/// The key of a model (as its embedder names it) and a bank's text.
pub fn key(model: &str, bank: &[&str]) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(model.as_bytes());
    for q in bank {
        h.update(&[0]);
        h.update(q.as_bytes());
    }
    h.digest()
}

/// The file for `key` in `dir`.
pub fn file(dir: &Path, key: u64) -> PathBuf {
    dir.join(format!("{key:016x}.emb"))
}

/// The `n` vectors stored under `key` at `path`, if that file holds them.
pub fn load(path: &Path, key: u64, n: usize) -> Option<Vec<Vec<f32>>> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return None;
    }
    let word = |at: usize, len: usize| -> u64 {
        let mut b = [0u8; 8];
        b[..len].copy_from_slice(&bytes[at..at + len]);
        u64::from_le_bytes(b)
    };
    let (stored, count, dim) = (word(8, 8), word(16, 4) as usize, word(20, 4) as usize);
    if stored != key || count != n || dim == 0 || bytes.len() != HEADER + count * dim * 4 {
        return None;
    }
    let floats: Vec<f32> = bytes[HEADER..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Some(floats.chunks_exact(dim).map(<[f32]>::to_vec).collect())
}

/// Stores `vectors` (all of one length) under `key` at `path`.
///
/// # Errors
///
/// The folder cannot be made or the file written.
pub fn save(path: &Path, key: u64, vectors: &[Vec<f32>]) -> std::io::Result<()> {
    let dim = vectors.first().map_or(0, Vec::len);
    if vectors.iter().any(|v| v.len() != dim) {
        return Err(std::io::Error::other("vectors of different lengths"));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    let mut out = Vec::with_capacity(HEADER + vectors.len() * dim * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&key.to_le_bytes());
    out.extend_from_slice(&(vectors.len() as u32).to_le_bytes());
    out.extend_from_slice(&(dim as u32).to_le_bytes());
    for v in vectors {
        for x in v {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    tmp.write_all(&out)?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_round_trip_under_their_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let k = key("model a", &["q1", "q2"]);
        let path = file(dir.path(), k);
        let v = vec![vec![1.0, -2.5, 3.25], vec![0.0, 1e-7, -0.0]];
        save(&path, k, &v).unwrap();
        assert_eq!(load(&path, k, 2), Some(v));
        assert_eq!(load(&path, k ^ 1, 2), None, "another key");
        assert_eq!(load(&path, k, 3), None, "another bank size");
        assert_ne!(k, key("model b", &["q1", "q2"]));
        assert_ne!(k, key("model a", &["q1", "q2", "q3"]));
        assert_ne!(key("m", &["ab", "c"]), key("m", &["a", "bc"]));
    }

    #[test]
    fn a_short_or_foreign_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let k = key("m", &["q"]);
        let path = file(dir.path(), k);
        save(&path, k, &[vec![1.0, 2.0]]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert_eq!(load(&path, k, 1), None);
        std::fs::write(&path, b"not an embedding file at all").unwrap();
        assert_eq!(load(&path, k, 1), None);
        assert_eq!(load(&dir.path().join("missing"), k, 1), None);
        assert!(save(&path, k, &[vec![1.0], vec![1.0, 2.0]]).is_err());
    }
}
