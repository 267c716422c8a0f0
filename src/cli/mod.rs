//! The command line's subcommands, apart from the library: each module
//! holds one subcommand's arguments and the code that runs it. `anyhow`
//! lives here and in `main.rs` only.

pub mod ask;
pub mod bench;
pub mod calibrate;
pub mod config;
pub mod eval;
pub mod fuzz;
pub mod probe;
pub mod serve;
pub mod status;

use anyhow::Context;
use std::path::Path;
use xnai_model_router::config::{Config, ConfigError, Placement};
use xnai_model_router::engine::llama::{EngineSettings, LlamaEngine};

/// CPU threads to use when not told: every core.
pub fn cores() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// A multi-threaded runtime for the async parts of a command.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("starting the async runtime")
}

/// The llama.cpp engine for a ladder, probing model files with this
/// very binary's `probe-model` subcommand.
pub fn engine(config: &Config) -> anyhow::Result<LlamaEngine> {
    let exe = std::env::current_exe().context("finding this program's path for model probes")?;
    Ok(LlamaEngine::start(EngineSettings::for_config(config, exe)))
}

/// Loads and validates the ladder at `path`.
pub fn load_config(path: &Path) -> anyhow::Result<Config> {
    load_config_placed(path, &Placement::AsWritten)
}

/// Loads and validates the ladder at `path`, placing its tiers.
pub fn load_config_placed(path: &Path, placement: &Placement) -> anyhow::Result<Config> {
    Config::load_placed(path, placement).map_err(config_hint)
}

/// A config error, with where the config is looked for when it is missing.
pub fn config_hint(e: ConfigError) -> anyhow::Error {
    match e {
        e @ ConfigError::Read { .. } => anyhow::Error::new(e)
            .context("pass --config FILE or set XNAI_CONFIG (the default is ./tiers.yaml)"),
        e => e.into(),
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}
