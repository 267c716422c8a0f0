//! Probing a model file in a child process before this process loads it.
//!
//! llama.cpp aborts the whole process on many malformed files (a failed
//! `GGML_ASSERT`, an uncaught exception, a bad read); the Rust checks in
//! [`crate::gguf`] catch what is cheap to see, and a race against every
//! assert is one we would lose. So the first time a process is about to
//! load a file, the binary's hidden `probe-model` subcommand loads it in
//! a child: the model, a small context, the chat template and a few
//! decoded tokens, the same code path the server uses. If the child dies
//! (a signal, an assert, a timeout) or reports an error, the tier fails
//! with the child's last stderr line, and this process never touches the
//! file.
//!
//! - [`identity`]: a file's identity (path, size, modification time) and
//!   the hash of its first and last bytes.
//! - [`verdicts`]: verdicts kept on disk by identity, so a good file costs
//!   one probe once and a replaced file is probed again.
//! - [`child`]: spawning the child with a deadline, and reading how it ended.
//!
//! Memory: the engine probes inside a load, after the pool has admitted
//! the tier (evicting what it must), so the child uses the room the model
//! is about to take and exits before the model is loaded here: the two
//! never hold memory at the same time beside the resident models.

pub mod child;
pub mod identity;
pub mod verdicts;

pub use identity::FileIdentity;

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use verdicts::Verdicts;

/// The hidden subcommand a probe child runs.
pub const SUBCOMMAND: &str = "probe-model";

/// What a probe child learned about a model that loaded and decoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ProbeFacts {
    pub n_vocab: u32,
    pub n_ctx_train: u32,
    pub n_embd: u32,
    pub n_layer: u32,
    pub bos: Option<i32>,
    pub eos: Option<i32>,
    /// Whether the prompt went through the model's chat template.
    pub chat_template: bool,
    /// Tokens the child decoded.
    pub decoded_tokens: u32,
    pub load_ms: f64,
    pub decode_ms: f64,
}

/// The verdict on one file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Outcome {
    Ok { facts: ProbeFacts },
    Failed { cause: String },
}

/// A verdict and what the probe cost.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    #[serde(flatten)]
    pub outcome: Outcome,
    /// Milliseconds the child ran, start to exit.
    pub probe_ms: f64,
}

/// A verdict, and whether it came from the verdict folder.
#[derive(Debug, Clone)]
pub struct Checked {
    pub verdict: Verdict,
    pub cached: bool,
}

/// Probes model files with a child of `exe` and keeps verdicts in a folder.
#[derive(Debug, Clone)]
pub struct Prober {
    exe: PathBuf,
    verdicts: Verdicts,
}

/// Counts since the process started, for status and metrics.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub struct ProbeCounts {
    /// Children run.
    pub probes: u64,
    /// Verdicts taken from the folder instead.
    pub cached: u64,
    /// Files found bad (by a child or from the folder).
    pub failed: u64,
}

static PROBES: AtomicU64 = AtomicU64::new(0);
static CACHED: AtomicU64 = AtomicU64::new(0);
static FAILED: AtomicU64 = AtomicU64::new(0);

/// This process's probe counts.
pub fn counts() -> ProbeCounts {
    ProbeCounts {
        probes: PROBES.load(Ordering::Relaxed),
        cached: CACHED.load(Ordering::Relaxed),
        failed: FAILED.load(Ordering::Relaxed),
    }
}

/// How long a probe of a file of `bytes` may take: 30 s, plus 60 s per
/// GiB for reading it from a slow disk.
pub fn timeout_for(bytes: u64) -> Duration {
    Duration::from_secs(30) + Duration::from_secs_f64(60.0 * bytes as f64 / (1u64 << 30) as f64)
}

impl Prober {
    /// A prober running `exe probe-model` (the xnai-model-router binary)
    /// and keeping verdicts in `dir`.
    pub fn new(exe: PathBuf, dir: PathBuf) -> Self {
        Prober {
            exe,
            verdicts: Verdicts::new(dir),
        }
    }

    /// The verdict on the file at `path`: from the folder when this very
    /// file was probed before, else from a child using `threads` threads.
    /// A verdict from a child that ran out of time or could not start is
    /// not kept (the next load tries again).
    pub fn check(&self, path: &Path, threads: u32) -> Checked {
        let known = FileIdentity::of(path).zip(identity::sample_hash(path).ok());
        if let Some((id, hash)) = &known {
            if let Some(verdict) = self.verdicts.get(id, *hash) {
                CACHED.fetch_add(1, Ordering::Relaxed);
                if matches!(verdict.outcome, Outcome::Failed { .. }) {
                    FAILED.fetch_add(1, Ordering::Relaxed);
                }
                return Checked {
                    verdict,
                    cached: true,
                };
            }
        }
        let (verdict, keep) = self.probe(path, threads);
        PROBES.fetch_add(1, Ordering::Relaxed);
        if matches!(verdict.outcome, Outcome::Failed { .. }) {
            FAILED.fetch_add(1, Ordering::Relaxed);
        }
        if let (Some((id, hash)), true) = (known, keep) {
            self.verdicts.put(&id, hash, &verdict);
        }
        Checked {
            verdict,
            cached: false,
        }
    }

    /// Runs a child on `path`; the flag says whether the verdict is
    /// definitive (worth keeping).
    fn probe(&self, path: &Path, threads: u32) -> (Verdict, bool) {
        let size = std::fs::metadata(path).map_or(0, |m| m.len());
        let timeout = timeout_for(size);
        let mut cmd = Command::new(&self.exe);
        cmd.arg(SUBCOMMAND)
            .arg(path)
            .arg("--threads")
            .arg(threads.max(1).to_string())
            // llama.cpp's errors reach stderr; ggml prints an assert and
            // aborts without attaching a debugger for a backtrace.
            .env("XNAI_LOG", "error")
            .env("GGML_NO_BACKTRACE", "1");
        let failed = |cause: String, ms: f64| Verdict {
            outcome: Outcome::Failed { cause },
            probe_ms: ms,
        };
        let ended = match child::run(cmd, timeout) {
            Ok(ended) => ended,
            Err(e) => {
                let cause = format!("cannot start the probe {}: {e}", self.exe.display());
                return (failed(cause, 0.0), false);
            }
        };
        let ms = ended.elapsed.as_secs_f64() * 1e3;
        // 126 and 127 are how an exec that could not run is reported
        // (by a shell, or by an emulator such as qemu-user): a fact about
        // the probe, not the file, so such a verdict is not kept.
        let not_run = ended
            .status
            .and_then(|s| s.code())
            .is_some_and(|c| c == 126 || c == 127);
        if let Some(cause) = ended.failure(timeout) {
            if not_run {
                let cause = format!("cannot start the probe {}: {cause}", self.exe.display());
                return (failed(cause, ms), false);
            }
            return (failed(cause, ms), ended.status.is_some());
        }
        let facts = child::last_line(&ended.stdout)
            .and_then(|line| serde_json::from_str::<ProbeFacts>(&line).ok());
        match facts {
            Some(facts) => (
                Verdict {
                    outcome: Outcome::Ok { facts },
                    probe_ms: ms,
                },
                true,
            ),
            None => (
                failed("the probe exited without reporting its facts".into(), ms),
                false,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeout_grows_with_the_file() {
        assert_eq!(timeout_for(0), Duration::from_secs(30));
        assert_eq!(timeout_for(1 << 30), Duration::from_secs(90));
        assert!(timeout_for(5 << 30) > Duration::from_secs(300));
    }

    #[test]
    fn a_probe_that_cannot_start_fails_and_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.gguf");
        std::fs::write(&model, b"GGUF").unwrap();
        let p = Prober::new(dir.path().join("no-such-exe"), dir.path().join("v"));
        let first = p.check(&model, 1);
        assert!(
            matches!(first.verdict.outcome, Outcome::Failed { ref cause } if cause.contains("cannot start")),
            "{first:?}"
        );
        assert!(!p.check(&model, 1).cached);
    }

    #[test]
    fn a_verdict_is_reused_for_the_same_file_and_not_for_a_replaced_one() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.gguf");
        std::fs::write(&model, b"GGUF one").unwrap();
        // `sh exe probe-model PATH ...` fails with a message on stderr: a
        // definitive verdict that is kept.
        let exe = dir.path().join("probe.sh");
        std::fs::write(&exe, "#!/bin/sh\necho \"error: bad $1\" >&2\nexit 1\n").unwrap();
        std::fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let p = Prober::new(exe, dir.path().join("v"));
        let first = p.check(&model, 2);
        assert!(!first.cached);
        assert!(
            matches!(first.verdict.outcome, Outcome::Failed { ref cause } if cause.ends_with("bad probe-model")),
            "{first:?}"
        );
        assert!(p.check(&model, 2).cached);
        std::fs::write(&model, b"GGUF two").unwrap();
        assert!(
            !p.check(&model, 2).cached,
            "a replaced file reused a verdict"
        );
    }
}
