//! Shared test helpers: where the real models are, and synthetic GGUF files
//! for config and pool-policy tests that do not need real weights.
#![allow(dead_code)]

pub mod client;

use std::io::Write;
use std::path::{Path, PathBuf};

pub const SMOL_Q4: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
pub const SMOL_F32: &str = "SmolLM2-135M-Instruct.F32.gguf";
pub const GEMMA: &str = "gemma-3-270m-q4_k_m.gguf";

/// The models folder the fetch script fills.
pub fn models_dir() -> PathBuf {
    match std::env::var_os("XNAI_MODELS_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => xnai_model_router::config::validate::default_models_dir(),
    }
}

/// A real model; fails loudly (never skips) when it is missing.
pub fn real_model(name: &str) -> PathBuf {
    let p = models_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-models.sh (the tests need the real models)",
        p.display()
    );
    p
}

/// The repository's default ladder, with learning off (in-process
/// routers never touch the user's corrections store).
pub fn default_config() -> xnai_model_router::config::Config {
    for m in [SMOL_Q4, SMOL_F32, GEMMA] {
        real_model(m);
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tiers.yaml");
    let mut config =
        xnai_model_router::config::Config::load(&path).expect("the default tiers.yaml validates");
    config.routing.learning.enabled = false;
    config
}

/// The repository's tiers.yaml as text without the line naming its
/// calibration file, so the thresholds a test writes into a copy are the
/// ones in force (each tier then uses the built-in calibration).
pub fn default_yaml_uncalibrated() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tiers.yaml");
    let text = std::fs::read_to_string(path).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("calibration:"))
        .collect();
    assert!(
        kept.len() < text.lines().count(),
        "tiers.yaml names a calibration file"
    );
    kept.join("\n") + "\n"
}

/// A fresh folder for a spawned server's `XDG_DATA_HOME`, so its routing
/// corrections store is its own, not the user's nor another test's.
pub fn fresh_data_home() -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "data-home-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(&(s.len() as u64).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
}

fn put_u32_kv(b: &mut Vec<u8>, key: &str, v: u32) {
    put_str(b, key);
    b.extend_from_slice(&4u32.to_le_bytes());
    b.extend_from_slice(&v.to_le_bytes());
}

/// Writes a structurally valid GGUF (llama architecture, a tiny shape, an
/// 8-token vocabulary) whose single F32 tensor holds `weight_bytes` bytes.
/// The data is a sparse hole, so large sizes cost no disk.
pub fn synthetic_gguf(dir: &Path, name: &str, weight_bytes: u64) -> PathBuf {
    let elems = (weight_bytes / 4).max(1);
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes()); // tensors
    b.extend_from_slice(&7u64.to_le_bytes()); // metadata entries
    put_str(&mut b, "general.architecture");
    b.extend_from_slice(&8u32.to_le_bytes());
    put_str(&mut b, "llama");
    put_u32_kv(&mut b, "llama.block_count", 1);
    put_u32_kv(&mut b, "llama.embedding_length", 64);
    put_u32_kv(&mut b, "llama.attention.head_count", 1);
    put_u32_kv(&mut b, "llama.attention.head_count_kv", 1);
    put_u32_kv(&mut b, "llama.context_length", 128);
    put_str(&mut b, "tokenizer.ggml.tokens");
    b.extend_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&8u32.to_le_bytes());
    b.extend_from_slice(&8u64.to_le_bytes());
    for i in 0..8 {
        put_str(&mut b, &format!("t{i}"));
    }
    put_str(&mut b, "w");
    b.extend_from_slice(&1u32.to_le_bytes());
    b.extend_from_slice(&elems.to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    while b.len() % 32 != 0 {
        b.push(0);
    }
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&b).unwrap();
    f.set_len(b.len() as u64 + elems * 4).unwrap();
    path
}

/// Copies the first `keep` bytes of `src` to `dir/name`: a truncated model.
pub fn truncated_copy(src: &Path, dir: &Path, name: &str, keep: u64) -> PathBuf {
    let data = std::fs::read(src).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, &data[..keep as usize]).unwrap();
    path
}

/// A ladder a, b, c of synthetic models (1, 2, 3 MiB of weights) with
/// `header` (memory and routing sections) on top, validated.
pub fn synthetic_ladder(
    header: &str,
) -> (
    tempfile::TempDir,
    std::sync::Arc<xnai_model_router::config::Config>,
) {
    let dir = tempfile::tempdir().unwrap();
    for (i, n) in ["a", "b", "c"].iter().enumerate() {
        synthetic_gguf(dir.path(), &format!("{n}.gguf"), (i as u64 + 1) << 20);
    }
    let yaml = format!(
        "{header}
tiers:
  - {{ name: a, role: router, model: a.gguf, threshold: 0.5, max_tokens: 64, context: 64 }}
  - {{ name: b, role: refine, model: b.gguf, threshold: 0.7, max_tokens: 64, context: 64 }}
  - {{ name: c, role: expert, model: c.gguf, threshold: 0.9, max_tokens: 64, context: 64 }}
"
    );
    let path = dir.path().join("tiers.yaml");
    std::fs::write(&path, yaml).unwrap();
    let mut config = xnai_model_router::config::Config::load(&path).unwrap();
    config.routing.learning.store = dir.path().join("routing.db");
    (dir, std::sync::Arc::new(config))
}
