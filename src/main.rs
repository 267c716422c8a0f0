//! The `xnai-model-router` command: parses the command line, sets up logging
//! on stderr, and hands each subcommand to its module in [`cli`].

mod cli;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use xnai_model_router::{mcp, quantize};

#[derive(Parser)]
#[command(
    version,
    about = "Local, offline LLM inference through a ladder of llama.cpp models"
)]
struct Cli {
    /// The ladder config.
    #[arg(
        long,
        short,
        global = true,
        env = "XNAI_CONFIG",
        default_value = "tiers.yaml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the MCP tools (route_query, get_tier_status, force_escalate).
    Serve(cli::serve::ServeArgs),
    /// Serve tiers from Redis for a front end (`serve --redis`) elsewhere.
    Worker(cli::serve::WorkerArgs),
    /// Print mcp-manifest.json: the server, how to launch it, its tools and schemas.
    Manifest,
    /// Ask one question on a tier (default: the smallest) or on any GGUF file.
    Ask(cli::ask::AskArgs),
    /// Print the ladder with each tier's estimated memory cost.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Validate or describe config files.
    Config {
        #[command(subcommand)]
        command: cli::config::ConfigCmd,
    },
    /// Write a copy of a GGUF model in another weight type (f16, q8_0, q4_k_m, ...).
    Quantize {
        input: PathBuf,
        output: PathBuf,
        #[arg(value_name = "TYPE")]
        weight_type: String,
        #[arg(long)]
        threads: Option<u32>,
    },
    /// Benchmarks that print ratios against a baseline measured in the same run.
    Bench {
        #[command(subcommand)]
        command: cli::bench::BenchCmd,
    },
    /// Fit each tier's confidence to its answers on a set of questions with
    /// accepted answers, and the thresholds that keep a precision.
    Calibrate(cli::calibrate::CalibrateArgs),
    /// Measure the routing classifier, or the whole cascade, on a labeled file.
    Eval {
        #[command(subcommand)]
        command: cli::eval::EvalCmd,
    },
    /// Put mutated copies of model files on a tier of a running server, over
    /// MCP, and count how each was caught; fails if the server ever dies.
    #[command(name = "fuzz-models")]
    FuzzModels(cli::fuzz::FuzzArgs),
    /// Load a model file and decode a few tokens, printing its facts as
    /// JSON: what a probe child does before a server loads a new file.
    #[command(name = "probe-model", hide = true)]
    ProbeModel {
        model: PathBuf,
        #[arg(long, default_value_t = 1)]
        threads: u32,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("XNAI_LOG")
                .unwrap_or_else(|_| "warn,xnai_model_router=info,llama-cpp-2=error".into()),
        )
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = cli.config.as_path();
    match cli.command {
        Cmd::Serve(args) => cli::serve::serve(config, args)?,
        Cmd::Worker(args) => cli::serve::worker(config, args)?,
        Cmd::Manifest => println!("{}", serde_json::to_string_pretty(&mcp::manifest())?),
        Cmd::Ask(args) => cli::ask::run(config, args)?,
        Cmd::Status { json } => cli::config::show_status(config, json)?,
        Cmd::Config { command } => return cli::config::run(config, command),
        Cmd::Quantize {
            input,
            output,
            weight_type,
            threads,
        } => {
            let threads = threads.unwrap_or_else(cli::cores);
            let q = quantize::quantize(&input, &output, &weight_type, threads)?;
            println!("{}", serde_json::to_string_pretty(&q)?);
        }
        Cmd::Bench { command } => cli::bench::run(config, command)?,
        Cmd::Calibrate(args) => cli::calibrate::run(config, args)?,
        Cmd::Eval { command } => cli::eval::run(config, command)?,
        Cmd::FuzzModels(args) => cli::fuzz::run(config, args)?,
        Cmd::ProbeModel { model, threads } => cli::probe::child(&model, threads)?,
    }
    Ok(ExitCode::SUCCESS)
}
