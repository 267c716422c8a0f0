//! KV state kept across model swaps: when a tier is unloaded, its cached
//! prompt's KV state goes to a folder on disk; when it is loaded again and
//! a prompt shares that prefix, the state is read back instead of
//! recomputed (llama-server saves slots only on request; this is automatic).
//!
//! Each entry is two files named by a hash of the model's identity and the
//! tokens: `<key>.kv`, llama.cpp's own sequence state file, and
//! `<key>.json`, ours: the model file's identity (path, size, modification
//! time), the prompt tokens and batch starts and the rule that chose each
//! batch's pass (see `prefix`), the state
//! file's length and xxh3 hash, and when it was last used. An entry is used
//! only when everything matches; a stale, truncated or corrupt one is logged,
//! deleted and skipped, and any failure (a full disk, an unreadable folder)
//! leaves the request to be answered cold. The folder is kept under
//! `max_bytes`, least recently used entries first out.

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::token::LlamaToken;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Where states go and how much room they may take.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreSettings {
    pub dir: PathBuf,
    pub max_bytes: u64,
}

/// A model file's identity: a replaced file never matches an old entry.
pub use crate::probe::FileIdentity as ModelIdentity;

/// One stored state, as its `.json` file holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub model: ModelIdentity,
    pub tokens: Vec<i32>,
    pub starts: Vec<usize>,
    /// The rule that picked each batch's pass (`prefix::PASS_RULE`); 0 in
    /// entries written before it was recorded.
    #[serde(default)]
    pub pass_rule: u32,
    pub state_bytes: u64,
    pub state_xxh3: u64,
    pub last_used_ms: u64,
}

/// The store's counters since the process started, for status and metrics.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub struct StoreCounts {
    pub saved: u64,
    pub hits: u64,
    pub misses: u64,
    pub restored_tokens: u64,
    pub failures: u64,
    /// Entries and bytes on disk after the last change.
    pub entries: u64,
    pub bytes: u64,
}

static SAVED: AtomicU64 = AtomicU64::new(0);
static HITS: AtomicU64 = AtomicU64::new(0);
static MISSES: AtomicU64 = AtomicU64::new(0);
static RESTORED: AtomicU64 = AtomicU64::new(0);
static FAILURES: AtomicU64 = AtomicU64::new(0);
static ENTRIES: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

/// The process's store counters.
pub fn counts() -> StoreCounts {
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    StoreCounts {
        saved: get(&SAVED),
        hits: get(&HITS),
        misses: get(&MISSES),
        restored_tokens: get(&RESTORED),
        failures: get(&FAILURES),
        entries: get(&ENTRIES),
        bytes: get(&BYTES),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The folder of saved states.
#[derive(Debug)]
pub struct StateStore {
    settings: StoreSettings,
}

impl StateStore {
    /// A store in `settings.dir` (created on first save); None when
    /// `max_bytes` is 0 (the store is off).
    pub fn new(settings: StoreSettings) -> Option<StateStore> {
        (settings.max_bytes > 0).then(|| {
            let store = StateStore { settings };
            store.refresh_totals();
            store
        })
    }

    fn paths(&self, key: &str) -> (PathBuf, PathBuf) {
        let base = self.settings.dir.join(key);
        (base.with_extension("kv"), base.with_extension("json"))
    }

    fn key(model: &ModelIdentity, tokens: &[LlamaToken]) -> String {
        let mut bytes = serde_json::to_vec(model).unwrap_or_default();
        bytes.extend(tokens.iter().flat_map(|t| t.0.to_le_bytes()));
        format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&bytes))
    }

    /// Every readable entry in the folder, with its key.
    fn entries(&self) -> Vec<(String, Entry)> {
        let Ok(dir) = std::fs::read_dir(&self.settings.dir) else {
            return Vec::new();
        };
        dir.filter_map(|f| {
            let path = f.ok()?.path();
            if path.extension()? != "json" {
                return None;
            }
            let key = path.file_stem()?.to_str()?.to_string();
            let entry = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Entry>(&b).ok());
            match entry {
                Some(e) => Some((key, e)),
                None => {
                    tracing::warn!(path = %path.display(), "unreadable KV state entry removed");
                    self.remove(&key);
                    None
                }
            }
        })
        .collect()
    }

    fn remove(&self, key: &str) {
        let (kv, json) = self.paths(key);
        let _ = std::fs::remove_file(json);
        let _ = std::fs::remove_file(kv);
    }

    fn refresh_totals(&self) {
        let entries = self.entries();
        ENTRIES.store(entries.len() as u64, Ordering::Relaxed);
        let bytes: u64 = entries.iter().map(|(_, e)| e.state_bytes).sum();
        BYTES.store(bytes, Ordering::Relaxed);
    }

    /// Saves `ctx`'s sequence 0, which holds `tokens` decoded in batches
    /// starting at `starts`, for `model`. Failures are logged, never raised.
    pub fn save(
        &self,
        model: &ModelIdentity,
        ctx: &LlamaContext<'_>,
        tokens: &[LlamaToken],
        starts: &[usize],
    ) {
        if tokens.is_empty() {
            return;
        }
        if let Err(e) = self.try_save(model, ctx, tokens, starts) {
            FAILURES.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, dir = %self.settings.dir.display(), "KV state not saved");
        }
        self.evict();
    }

    fn try_save(
        &self,
        model: &ModelIdentity,
        ctx: &LlamaContext<'_>,
        tokens: &[LlamaToken],
        starts: &[usize],
    ) -> Result<(), String> {
        std::fs::create_dir_all(&self.settings.dir).map_err(|e| e.to_string())?;
        let key = Self::key(model, tokens);
        let (kv, json) = self.paths(&key);
        let tmp = kv.with_extension("kv.part");
        ctx.state_seq_save_file(&tmp, 0, tokens)
            .map_err(|e| format!("llama.cpp could not write the state: {e}"))?;
        let state = std::fs::read(&tmp).map_err(|e| e.to_string())?;
        let entry = Entry {
            model: model.clone(),
            tokens: tokens.iter().map(|t| t.0).collect(),
            starts: starts.to_vec(),
            pass_rule: super::prefix::PASS_RULE,
            state_bytes: state.len() as u64,
            state_xxh3: xxhash_rust::xxh3::xxh3_64(&state),
            last_used_ms: now_ms(),
        };
        if entry.state_bytes > self.settings.max_bytes {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!(
                "{} bytes of state exceed cache.max_bytes {}",
                entry.state_bytes, self.settings.max_bytes
            ));
        }
        std::fs::rename(&tmp, &kv).map_err(|e| e.to_string())?;
        let body = serde_json::to_vec(&entry).map_err(|e| e.to_string())?;
        write_atomic(&json, &body).map_err(|e| e.to_string())?;
        SAVED.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            tokens = tokens.len(),
            bytes = entry.state_bytes,
            "KV state saved"
        );
        Ok(())
    }

    /// Removes least recently used entries until the folder fits.
    fn evict(&self) {
        let mut entries = self.entries();
        entries.sort_by_key(|(_, e)| std::cmp::Reverse(e.last_used_ms));
        let mut total = 0;
        for (key, e) in entries {
            total += e.state_bytes;
            if total > self.settings.max_bytes {
                self.remove(&key);
            }
        }
        self.refresh_totals();
    }

    /// The stored entry for `model` that `score` rates highest (the tokens
    /// it would let a prompt keep), if it beats `better_than`.
    pub fn best(
        &self,
        model: &ModelIdentity,
        better_than: usize,
        score: impl Fn(&[LlamaToken], &[usize]) -> usize,
    ) -> Option<(String, Entry, usize)> {
        let best = self
            .entries()
            .into_iter()
            .filter(|(_, e)| &e.model == model && e.pass_rule == super::prefix::PASS_RULE)
            .map(|(k, e)| {
                let tokens: Vec<LlamaToken> = e.tokens.iter().map(|&t| LlamaToken(t)).collect();
                let s = score(&tokens, &e.starts);
                (k, e, s)
            })
            .max_by_key(|(_, _, s)| *s)
            .filter(|(_, _, s)| *s > better_than);
        if best.is_none() {
            MISSES.fetch_add(1, Ordering::Relaxed);
        }
        best
    }

    /// Reads entry `key` into `ctx`'s sequence 0 (which must be empty);
    /// the entry's tokens on success. A bad entry is removed.
    pub fn restore(
        &self,
        key: &str,
        entry: &Entry,
        ctx: &mut LlamaContext<'_>,
    ) -> Option<Vec<LlamaToken>> {
        match self.try_restore(key, entry, ctx) {
            Ok(tokens) => {
                HITS.fetch_add(1, Ordering::Relaxed);
                RESTORED.fetch_add(tokens.len() as u64, Ordering::Relaxed);
                let mut touched = entry.clone();
                touched.last_used_ms = now_ms();
                if let Ok(body) = serde_json::to_vec(&touched) {
                    let _ = write_atomic(&self.paths(key).1, &body);
                }
                Some(tokens)
            }
            Err(e) => {
                FAILURES.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, key, "KV state entry skipped and removed; answering cold");
                ctx.clear_kv_cache();
                self.remove(key);
                self.refresh_totals();
                None
            }
        }
    }

    fn try_restore(
        &self,
        key: &str,
        entry: &Entry,
        ctx: &mut LlamaContext<'_>,
    ) -> Result<Vec<LlamaToken>, String> {
        let (kv, _) = self.paths(key);
        let state = std::fs::read(&kv).map_err(|e| format!("{}: {e}", kv.display()))?;
        if state.len() as u64 != entry.state_bytes {
            return Err(format!(
                "{} bytes, {} expected",
                state.len(),
                entry.state_bytes
            ));
        }
        if xxhash_rust::xxh3::xxh3_64(&state) != entry.state_xxh3 {
            return Err("the state's checksum does not match".into());
        }
        ctx.clear_kv_cache();
        let (tokens, _) = ctx
            .state_seq_load_file(&kv, 0, entry.tokens.len())
            .map_err(|e| format!("llama.cpp could not read the state: {e}"))?;
        if tokens.iter().map(|t| t.0).ne(entry.tokens.iter().copied()) {
            return Err("the state holds other tokens than its entry".into());
        }
        Ok(tokens)
    }
}

/// Writes `body` to `path` through a temporary file and a rename.
fn write_atomic(path: &Path, body: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.part");
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, path)
}
