//! Probe verdicts kept on disk, one JSON file per file identity, so a good
//! file costs one probe once and a replaced file is probed again.

use super::identity::FileIdentity;
use super::Verdict;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One verdict file: the identity it is about, and the verdict.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    identity: FileIdentity,
    sample_xxh3: u64,
    verdict: Verdict,
}

/// The folder of verdicts. Any failure to read or write it only costs a
/// probe: the folder is a cache, never a source of errors.
#[derive(Debug, Clone)]
pub struct Verdicts {
    dir: PathBuf,
}

impl Verdicts {
    pub fn new(dir: PathBuf) -> Self {
        Verdicts { dir }
    }

    /// The file a verdict on `identity` lives in.
    fn file(&self, identity: &FileIdentity) -> PathBuf {
        let key = xxhash_rust::xxh3::xxh3_64(identity.path.as_os_str().as_encoded_bytes());
        self.dir.join(format!("{key:016x}.json"))
    }

    /// The stored verdict on exactly this file, if any.
    pub fn get(&self, identity: &FileIdentity, sample_xxh3: u64) -> Option<Verdict> {
        let text = std::fs::read(self.file(identity)).ok()?;
        let stored: Stored = serde_json::from_slice(&text).ok()?;
        (stored.identity == *identity && stored.sample_xxh3 == sample_xxh3)
            .then_some(stored.verdict)
    }

    /// Keeps `verdict` on this file, replacing the one on an older file at
    /// the same path. Written to a temporary file and renamed, so a reader
    /// never sees half a verdict.
    pub fn put(&self, identity: &FileIdentity, sample_xxh3: u64, verdict: &Verdict) {
        let stored = Stored {
            identity: identity.clone(),
            sample_xxh3,
            verdict: verdict.clone(),
        };
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&self.dir)?;
            let tmp = tempfile_in(&self.dir)?;
            std::fs::write(&tmp, serde_json::to_vec_pretty(&stored)?)?;
            std::fs::rename(&tmp, self.file(identity))
        };
        if let Err(e) = write() {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot keep a probe verdict; the file will be probed again next time");
        }
    }
}

/// A fresh temporary file name in `dir`.
fn tempfile_in(dir: &Path) -> std::io::Result<PathBuf> {
    let name = format!(".{}-{}.tmp", std::process::id(), uuid::Uuid::new_v4());
    Ok(dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::super::Outcome;
    use super::*;

    fn verdict(cause: &str) -> Verdict {
        Verdict {
            outcome: Outcome::Failed {
                cause: cause.into(),
            },
            probe_ms: 1.0,
        }
    }

    #[test]
    fn a_verdict_is_found_only_for_the_same_file() {
        let dir = tempfile::tempdir().unwrap();
        let v = Verdicts::new(dir.path().join("probes"));
        let id = FileIdentity {
            path: "/models/a.gguf".into(),
            size: 10,
            modified_ns: 5,
        };
        assert!(v.get(&id, 1).is_none());
        v.put(&id, 1, &verdict("boom"));
        assert!(matches!(
            v.get(&id, 1).unwrap().outcome,
            Outcome::Failed { ref cause } if cause == "boom"
        ));
        assert!(v.get(&id, 2).is_none(), "another content hash matched");
        let newer = FileIdentity {
            modified_ns: 6,
            ..id.clone()
        };
        assert!(v.get(&newer, 1).is_none(), "a replaced file matched");
        v.put(&newer, 1, &verdict("other"));
        assert!(v.get(&id, 1).is_none(), "the old verdict was not replaced");
    }

    #[test]
    fn an_unwritable_folder_is_not_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"x").unwrap();
        let v = Verdicts::new(blocker.join("probes"));
        let id = FileIdentity {
            path: "/m.gguf".into(),
            size: 1,
            modified_ns: 1,
        };
        v.put(&id, 0, &verdict("x"));
        assert!(v.get(&id, 0).is_none());
    }
}
