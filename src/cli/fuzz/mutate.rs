//! Mutants of a model file: a seeded plan of byte changes in one part of
//! the file (header, metadata, tensor table, tensor data) or a
//! truncation, and writing the mutated copy.

use serde::Serialize;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use xnai_model_router::engine::sampling::Rng;

/// Where a mutant's change is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Magic, version and the two counts (the first 24 bytes).
    Header,
    /// Keys and values, the tokenizer included.
    Metadata,
    /// Tensor names, shapes, types and offsets.
    TensorTable,
    /// Weights.
    Data,
    /// The file cut short at a random offset.
    Truncate,
}

/// The order kinds take, mutant after mutant: metadata and the tensor
/// table, where llama.cpp's asserts live, most often.
const CYCLE: [Kind; 8] = [
    Kind::Metadata,
    Kind::TensorTable,
    Kind::Metadata,
    Kind::Data,
    Kind::Header,
    Kind::Truncate,
    Kind::Metadata,
    Kind::TensorTable,
];

/// Most bytes one mutant changes.
const MAX_FLIPS: u64 = 32;

/// The parts of a model file, from its GGUF header.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub size: u64,
    pub tensor_table_at: u64,
    pub data_at: u64,
}

impl Layout {
    /// The byte range of `kind`'s part of the file (never empty).
    fn range(&self, kind: Kind) -> (u64, u64) {
        let (start, end) = match kind {
            Kind::Header => (0, 24),
            Kind::Metadata => (24, self.tensor_table_at),
            Kind::TensorTable => (self.tensor_table_at, self.data_at),
            Kind::Data | Kind::Truncate => (self.data_at, self.size),
        };
        let end = end.min(self.size);
        (start.min(end.saturating_sub(1)), end.max(1))
    }
}

/// One mutant: bytes to overwrite, or a length to cut the file to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mutation {
    pub kind: Kind,
    /// (offset, new byte); each differs from the original byte.
    pub edits: Vec<(u64, u8)>,
    pub truncate_to: Option<u64>,
}

/// Uniform in [lo, hi) from `rng`.
fn range(rng: &mut Rng, lo: u64, hi: u64) -> u64 {
    lo + rng.next_u64() % (hi - lo).max(1)
}

/// The `index`-th mutant of a file laid out as `layout`; `original`
/// reads the file's byte at an offset, so every edit changes it.
pub fn plan(
    layout: &Layout,
    index: usize,
    rng: &mut Rng,
    original: impl Fn(u64) -> u8,
) -> Mutation {
    let kind = CYCLE[index % CYCLE.len()];
    let (start, end) = layout.range(kind);
    if kind == Kind::Truncate {
        // Anywhere from the start of the header to just short of the end.
        let cut = range(rng, 0, layout.size.max(1));
        return Mutation {
            kind,
            edits: Vec::new(),
            truncate_to: Some(cut),
        };
    }
    let flips = range(rng, 1, MAX_FLIPS + 1);
    let edits = (0..flips)
        .map(|_| {
            let at = range(rng, start, end);
            let old = original(at);
            let new = old ^ (1 + range(rng, 0, 255) as u8);
            (at, new)
        })
        .collect();
    Mutation {
        kind,
        edits,
        truncate_to: None,
    }
}

/// Writes `source` with `m` applied to `dest`.
///
/// # Errors
///
/// Reading `source` or writing `dest`.
pub fn write(source: &Path, dest: &Path, m: &Mutation) -> std::io::Result<()> {
    std::fs::copy(source, dest)?;
    let mut f = std::fs::OpenOptions::new().write(true).open(dest)?;
    for &(at, byte) in &m.edits {
        f.seek(SeekFrom::Start(at))?;
        f.write_all(&[byte])?;
    }
    if let Some(len) = m.truncate_to {
        f.set_len(len)?;
    }
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYOUT: Layout = Layout {
        size: 10_000,
        tensor_table_at: 3_000,
        data_at: 4_096,
    };

    #[test]
    fn a_seed_names_the_same_mutants_and_edits_stay_in_their_part() {
        let mut a = Rng::new(7);
        let mut b = Rng::new(7);
        for i in 0..40 {
            let m = plan(&LAYOUT, i, &mut a, |_| 0);
            assert_eq!(m, plan(&LAYOUT, i, &mut b, |_| 0));
            let (start, end) = LAYOUT.range(m.kind);
            match m.kind {
                Kind::Truncate => assert!(m.truncate_to.unwrap() < LAYOUT.size),
                _ => {
                    assert!((1..=MAX_FLIPS as usize).contains(&m.edits.len()));
                    for &(at, byte) in &m.edits {
                        assert!((start..end).contains(&at), "{:?} edit at {at}", m.kind);
                        assert_ne!(byte, 0, "an edit left the byte as it was");
                    }
                }
            }
        }
    }

    #[test]
    fn every_kind_comes_up() {
        let mut rng = Rng::new(1);
        let kinds: std::collections::HashSet<_> = (0..8)
            .map(|i| plan(&LAYOUT, i, &mut rng, |_| 0).kind)
            .collect();
        assert_eq!(kinds.len(), 5);
    }

    #[test]
    fn a_mutant_differs_from_its_source_where_planned() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("a");
        std::fs::write(&src, vec![5u8; 100]).unwrap();
        let dst = dir.path().join("b");
        let m = Mutation {
            kind: Kind::Data,
            edits: vec![(10, 6)],
            truncate_to: Some(50),
        };
        write(&src, &dst, &m).unwrap();
        let out = std::fs::read(&dst).unwrap();
        assert_eq!(out.len(), 50);
        assert_eq!(out[10], 6);
        assert_eq!(out[11], 5);
    }
}
