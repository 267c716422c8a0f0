//! `config check`, `config schema` and `status`: the ladder as written,
//! validated and costed, without loading a model (except in a probe child,
//! with `config check --probe`).

use super::{load_config, status};
use clap::Subcommand;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use xnai_model_router::config::{self, Config};

#[derive(Subcommand)]
pub enum ConfigCmd {
    /// Validate a config; exits 1 and lists every problem when it is invalid.
    Check {
        /// Defaults to --config.
        file: Option<PathBuf>,
        /// Also load every local tier's file in a child process (see
        /// `probe:` in tiers.yaml) and print each verdict; exits 1 if any
        /// file fails.
        #[arg(long)]
        probe: bool,
    },
    /// Print the JSON Schema of tiers.yaml.
    Schema,
}

/// Runs a `config` subcommand on `default` (the --config path).
pub fn run(default: &Path, cmd: ConfigCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ConfigCmd::Schema => {
            println!("{}", serde_json::to_string_pretty(&config::json_schema())?);
            Ok(ExitCode::SUCCESS)
        }
        ConfigCmd::Check { file, probe } => {
            let path = file.unwrap_or_else(|| default.to_path_buf());
            Ok(match Config::load(&path) {
                Ok(c) => {
                    println!("{}: ok, {} tier(s)", path.display(), c.tiers.len());
                    print!("{}", status::render(&c));
                    if probe && !super::probe::check_all(&c)? {
                        return Ok(ExitCode::FAILURE);
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            })
        }
    }
}

/// `status`: the ladder with its costs, as a table or as JSON.
pub fn show_status(path: &Path, json: bool) -> anyhow::Result<()> {
    let c = load_config(path)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&c)?);
    } else {
        print!("{}", status::render(&c));
    }
    Ok(())
}
