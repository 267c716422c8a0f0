//! The `xnai-model-router` command: parses the command line, sets up logging
//! on stderr, and calls the library.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use xnai_model_router::ask::{ask, AskOptions};
use xnai_model_router::config::{self, Config, ConfigError, Placement};
use xnai_model_router::engine::llama::LlamaEngine;
use xnai_model_router::http::HttpOptions;
use xnai_model_router::mcp::{self, McpServer};
use xnai_model_router::pool::TierPool;
use xnai_model_router::remote::{Redis, RemoteTiers, Worker, WorkerOptions};
use xnai_model_router::router::Router;
use xnai_model_router::{bench, quantize, status};

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

#[derive(Clone, Copy, clap::ValueEnum)]
enum Transport {
    /// MCP over standard input/output (what MCP clients spawn).
    Stdio,
    /// MCP over HTTP: Streamable HTTP at /mcp and the older SSE transport at /sse.
    Http,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the MCP tools (route_query, get_tier_status, force_escalate).
    Serve {
        #[arg(long, value_enum, default_value = "stdio")]
        transport: Transport,
        /// Address for --transport http. Loopback by default; any other
        /// address requires a token.
        #[arg(long, default_value = "127.0.0.1:8080")]
        bind: std::net::SocketAddr,
        /// File holding the bearer token HTTP clients must send (the
        /// XNAI_HTTP_TOKEN environment variable is the other way; never on
        /// the command line).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Also accept this Host name (repeatable), e.g. the machine's LAN name.
        #[arg(long)]
        allow_host: Vec<String>,
        /// Also accept this browser Origin (repeatable), e.g. https://app.example.com.
        #[arg(long)]
        allow_origin: Vec<String>,
        /// Redis for the remote tiers (those with `remote: true`), e.g.
        /// redis://bigbox:6379; workers on other machines answer them.
        #[arg(long, env = "XNAI_REDIS_URL")]
        redis: Option<String>,
        /// Treat every tier as remote (this machine only routes).
        #[arg(long, requires = "redis")]
        all_remote: bool,
    },
    /// Serve tiers from Redis for a front end (`serve --redis`) elsewhere.
    Worker {
        /// The Redis the front end uses, e.g. redis://bigbox:6379.
        #[arg(long, env = "XNAI_REDIS_URL")]
        redis: String,
        /// Tiers to serve, comma-separated (default: every tier whose model
        /// is here and fits this machine's memory budget).
        #[arg(long, value_delimiter = ',')]
        tiers: Vec<String>,
        /// This worker's name in results and get_tier_status (default: host-pid).
        #[arg(long)]
        id: Option<String>,
        /// CPU threads per generation, overriding the tiers' `threads`
        /// (with several workers on one machine, split its cores).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        threads: Option<u32>,
    },
    /// Print mcp-manifest.json: the server, how to launch it, its tools and schemas.
    Manifest,
    /// Ask one question on a tier (default: the smallest) or on any GGUF file.
    Ask {
        /// Tier name from the config.
        #[arg(long, conflicts_with_all = ["model", "all"])]
        tier: Option<String>,
        /// Any GGUF file, bypassing the config's tiers.
        #[arg(long, conflicts_with = "all")]
        model: Option<PathBuf>,
        /// Ask every tier in turn, smallest first, in one process.
        #[arg(long)]
        all: bool,
        /// Most tokens to generate (default: the tier's max_tokens).
        #[arg(long)]
        max_tokens: Option<u32>,
        /// Sampling temperature; greedy when absent or 0.
        #[arg(long)]
        temperature: Option<f32>,
        /// Nucleus sampling: keep the most probable tokens up to this mass.
        #[arg(long, default_value_t = 0.95)]
        top_p: f32,
        /// Seed for sampling; the same seed gives the same answer.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Stop before this string (repeatable).
        #[arg(long)]
        stop: Vec<String>,
        /// A system prompt.
        #[arg(long)]
        system: Option<String>,
        /// The question.
        question: String,
    },
    /// Print the ladder with each tier's estimated memory cost.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Validate or describe config files.
    Config {
        #[command(subcommand)]
        command: ConfigCmd,
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
        command: BenchCmd,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate a config; exits 1 and lists every problem when it is invalid.
    Check {
        /// Defaults to --config.
        file: Option<PathBuf>,
    },
    /// Print the JSON Schema of tiers.yaml.
    Schema,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Speculative vs target-only greedy decoding, interleaved A/B, plus n-gram mode.
    Speculative {
        /// Draft model (default: SmolLM2-135M Q4_1 in $XNAI_MODELS_DIR).
        #[arg(long)]
        draft: Option<PathBuf>,
        /// Target model (default: SmolLM2-135M F32 in $XNAI_MODELS_DIR).
        #[arg(long)]
        target: Option<PathBuf>,
        #[arg(long, default_value_t = 8)]
        draft_max: u32,
        #[arg(long, default_value_t = 1)]
        draft_min: u32,
        #[arg(long, default_value_t = 0.0)]
        p_min: f32,
        #[arg(long)]
        adaptive: bool,
        #[arg(long, default_value_t = 160)]
        tokens: u32,
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        #[arg(long)]
        threads: Option<u32>,
        /// Print one JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// The Redis hop against a local call, and N concurrent requests with
    /// one worker against two (starts its own redis-server and workers).
    Scaleout {
        /// Tier to serve (default: the smallest).
        #[arg(long)]
        tier: Option<String>,
        /// Concurrent requests per throughput round.
        #[arg(long, default_value_t = 8)]
        requests: usize,
        #[arg(long, default_value_t = 64)]
        max_tokens: u32,
        /// Interleaved local/remote pairs for the hop latency.
        #[arg(long, default_value_t = 30)]
        samples: usize,
        /// Use this Redis instead of starting a private redis-server.
        #[arg(long)]
        redis: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// The baseline's child process: llama.cpp's raw decode loop, prints tokens/s.
    #[command(hide = true)]
    DecodeLoop {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        threads: u32,
        #[arg(long)]
        tokens: u32,
        #[arg(long)]
        context: u32,
    },
    /// Generation tokens/s against llama.cpp's llama-bench, same model and threads.
    Engine {
        /// Models to measure (default: the smallest tier's).
        #[arg(long = "model")]
        models: Vec<PathBuf>,
        #[arg(long)]
        threads: Option<u32>,
        #[arg(long, default_value_t = 128)]
        tokens: u32,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Also run this llama-bench binary in every round, as a third column.
        #[arg(long, env = "XNAI_LLAMA_BENCH")]
        llama_bench: Option<PathBuf>,
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
    match cli.command {
        Cmd::Serve {
            transport,
            bind,
            token_file,
            allow_host,
            allow_origin,
            redis,
            all_remote,
        } => {
            let placement = if all_remote {
                Placement::AllRemote
            } else {
                Placement::AsWritten
            };
            let config = Arc::new(load_config_placed(&cli.config, &placement)?);
            let remote_names: Vec<&str> = config
                .remote_tiers()
                .iter()
                .map(|t| t.name.as_str())
                .collect();
            let redis = match redis {
                Some(url) => {
                    if remote_names.is_empty() {
                        tracing::warn!("--redis is set but no tier is remote: mark tiers `remote: true` or pass --all-remote");
                    }
                    Some(Redis::open(&url)?)
                }
                None if !remote_names.is_empty() => bail!(
                    "tiers {} are remote (remote: true) but no Redis is given: pass --redis URL or set XNAI_REDIS_URL",
                    remote_names.join(", ")
                ),
                None => None,
            };
            let http = HttpOptions {
                bind,
                token: read_token(token_file.as_deref())?,
                allow_hosts: allow_host,
                allow_origins: allow_origin,
            };
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(serve(config, transport, http, redis))?;
        }
        Cmd::Worker {
            redis,
            tiers,
            id,
            threads,
        } => {
            let (mut config, served, skipped) =
                Config::load_for_worker(&cli.config, &tiers).map_err(config_hint)?;
            if let Some(n) = threads {
                config.tiers.iter_mut().for_each(|t| t.threads = n);
            }
            for p in skipped {
                eprintln!("worker: not serving: {p}");
            }
            let redis = Redis::open(&redis)?;
            let opts = WorkerOptions {
                id: id.unwrap_or_else(xnai_model_router::remote::worker::default_id),
                tiers: served,
                settings: config.redis.clone(),
            };
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                let pool = TierPool::new(LlamaEngine::new(), Arc::new(config));
                let worker = Arc::new(Worker::new(pool, redis, opts));
                let stop = tokio_util::sync::CancellationToken::new();
                let on_signal = stop.clone();
                tokio::spawn(async move {
                    shutdown_signal().await;
                    on_signal.cancel();
                });
                worker.run(stop).await;
            });
        }
        Cmd::Manifest => {
            println!("{}", serde_json::to_string_pretty(&mcp::manifest())?);
        }
        Cmd::Config {
            command: ConfigCmd::Schema,
        } => {
            println!("{}", serde_json::to_string_pretty(&config::json_schema())?);
        }
        Cmd::Config {
            command: ConfigCmd::Check { file },
        } => {
            let path = file.unwrap_or(cli.config);
            return Ok(match Config::load(&path) {
                Ok(c) => {
                    println!("{}: ok, {} tier(s)", path.display(), c.tiers.len());
                    print!("{}", status::render(&c, None));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            });
        }
        Cmd::Status { json } => {
            let c = load_config(&cli.config)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&c)?);
            } else {
                print!("{}", status::render(&c, None));
            }
        }
        Cmd::Quantize {
            input,
            output,
            weight_type,
            threads,
        } => {
            let threads = threads.unwrap_or_else(cores);
            let q = quantize::quantize(&input, &output, &weight_type, threads)?;
            println!("{}", serde_json::to_string_pretty(&q)?);
        }
        Cmd::Ask {
            tier,
            model,
            all,
            max_tokens,
            temperature,
            top_p,
            seed,
            stop,
            system,
            question,
        } => {
            let config = match &model {
                Some(path) => Config::for_model(path)?,
                None => load_config(&cli.config)?,
            };
            let tiers: Vec<Option<String>> = if all {
                config.tiers.iter().map(|t| Some(t.name.clone())).collect()
            } else {
                vec![tier]
            };
            let pool = TierPool::new(LlamaEngine::new(), Arc::new(config));
            let rt = tokio::runtime::Runtime::new()?;
            for tier in tiers {
                let opts = AskOptions {
                    tier,
                    max_tokens,
                    temperature,
                    top_p,
                    seed,
                    stop: stop.clone(),
                    system: system.clone(),
                };
                let result = rt.block_on(ask(&pool, &question, &opts))?;
                println!("[{}] {}", result.tier, result.answer);
                println!("{}", serde_json::to_string_pretty(&result)?);
            }
        }
        Cmd::Bench {
            command:
                BenchCmd::Speculative {
                    draft,
                    target,
                    draft_max,
                    draft_min,
                    p_min,
                    adaptive,
                    tokens,
                    rounds,
                    threads,
                    json,
                },
        } => {
            let dir = xnai_model_router::config::validate::default_models_dir();
            let dir = std::env::var_os("XNAI_MODELS_DIR").map_or(dir, PathBuf::from);
            let draft = draft.unwrap_or_else(|| dir.join("SmolLM2-135M-Instruct.Q4_1.gguf"));
            let target = target.unwrap_or_else(|| dir.join("SmolLM2-135M-Instruct.F32.gguf"));
            let params = xnai_model_router::engine::SpecParams {
                draft_max,
                draft_min,
                p_min,
                adaptive,
            };
            let rt = tokio::runtime::Runtime::new()?;
            let r = rt.block_on(bench::speculative_bench(
                &draft,
                &target,
                threads.unwrap_or_else(cores),
                tokens,
                params,
                rounds.max(1),
            ))?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                print!("{}", bench::render_spec(&r));
            }
        }
        Cmd::Bench {
            command:
                BenchCmd::Scaleout {
                    tier,
                    requests,
                    max_tokens,
                    samples,
                    redis,
                    json,
                },
        } => {
            use xnai_model_router::remote::bench as scale;
            let opts = scale::ScaleoutOptions {
                config: cli.config.clone(),
                tier,
                requests: requests.max(1),
                max_tokens,
                samples: samples.max(1),
                redis,
                cores: cores(),
            };
            let rt = tokio::runtime::Runtime::new()?;
            let r = rt.block_on(scale::scaleout(&opts))?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                print!("{}", scale::render(&r));
            }
        }
        Cmd::Bench {
            command:
                BenchCmd::DecodeLoop {
                    model,
                    threads,
                    tokens,
                    context,
                },
        } => {
            let mut b = bench::Baseline::new(&model, threads, context)?;
            b.round(tokens)?;
            println!("{}", b.round(tokens)?);
        }
        Cmd::Bench {
            command:
                BenchCmd::Engine {
                    models,
                    threads,
                    tokens,
                    rounds,
                    llama_bench,
                },
        } => {
            if let Some(bin) = llama_bench.as_ref().filter(|b| !b.exists()) {
                bail!("llama-bench not found at {}", bin.display());
            }
            let models = if models.is_empty() {
                vec![load_config(&cli.config)?.tiers[0].model.clone()]
            } else {
                models
            };
            let threads = threads.unwrap_or_else(cores);
            let rt = tokio::runtime::Runtime::new()?;
            for m in models {
                let r = rt.block_on(bench::engine_bench(
                    llama_bench.as_deref(),
                    &m,
                    threads,
                    tokens,
                    rounds,
                ))?;
                println!(
                    "{}: ours {:.1} tok/s, llama.cpp decode loop {:.1} tok/s, ratio {:.3}{} ({} threads, {} tokens, median of {} alternating rounds)",
                    m.file_name().unwrap_or_default().to_string_lossy(),
                    r.ours_median,
                    r.baseline_median,
                    r.ratio,
                    r.llama_bench_median
                        .map(|t| format!(", llama-bench {t:.1} tok/s"))
                        .unwrap_or_default(),
                    r.threads,
                    r.tokens,
                    r.rounds
                );
                println!("{}", serde_json::to_string(&r)?);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn exe() -> String {
    std::env::current_exe().map_or_else(|_| "xnai-model-router".into(), |p| p.display().to_string())
}

/// The HTTP token: from --token-file, else XNAI_HTTP_TOKEN; never argv.
fn read_token(file: Option<&Path>) -> anyhow::Result<Option<String>> {
    let token = match file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading --token-file {}", path.display()))?,
        ),
        None => std::env::var("XNAI_HTTP_TOKEN").ok(),
    };
    match token.map(|t| t.trim().to_string()) {
        Some(t) if t.is_empty() => bail!(
            "the HTTP token is empty ({}); put a long random string there",
            file.map_or("XNAI_HTTP_TOKEN".to_string(), |p| p.display().to_string())
        ),
        Some(t) if t.len() < 16 => bail!(
            "the HTTP token is {} characters; use at least 16 (e.g. `openssl rand -hex 32`)",
            t.len()
        ),
        t => Ok(t),
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
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

async fn serve(
    config: Arc<Config>,
    transport: Transport,
    http: HttpOptions,
    redis: Option<Redis>,
) -> anyhow::Result<()> {
    let config_path =
        std::fs::canonicalize(&config.source).unwrap_or_else(|_| config.source.clone());
    use rmcp::ServiceExt;
    let tiers = config.tier_names();
    let grace = std::time::Duration::from_secs(config.server.shutdown_grace_secs);
    let redis_settings = config.redis.clone();
    let mut router = Router::new(LlamaEngine::new(), config);
    if let Some(redis) = redis {
        router = router.with_remote(RemoteTiers::new(redis, redis_settings));
    }
    let router = Arc::new(router);
    let hangup = tokio_util::sync::CancellationToken::new();
    let server = McpServer::new(router.clone()).with_hangup(hangup.clone());
    match transport {
        Transport::Http => {
            let bind = http.bind;
            xnai_model_router::http::serve(router, http, shutdown_signal(), |addr| {
                tracing::info!(%tiers, %addr, "serving MCP over HTTP");
                eprintln!(
                    "xnai-model-router: MCP over HTTP on {addr}\n  Streamable HTTP: http://{addr}/mcp\n  SSE (older clients): http://{addr}/sse\n  health: http://{addr}/healthz   metrics: http://{addr}/metrics"
                );
            })
            .await
            .with_context(|| format!("serving HTTP on {bind}"))?;
        }
        Transport::Stdio => {
            tracing::info!(%tiers, "serving MCP over stdio");
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                eprintln!(
                    "xnai-model-router: MCP server on stdin/stdout, waiting for a client (Ctrl-C to stop).\n\
                     Register it with an MCP client instead, e.g.:\n  \
                     claude mcp add xnai-model-router -- {} serve --config {}\n\
                     or try it with the MCP Inspector:\n  \
                     npx @modelcontextprotocol/inspector --cli {} serve --method tools/list",
                    exe(),
                    config_path.display(),
                    exe()
                );
            }
            let running = server.serve(rmcp::transport::stdio()).await?;
            // In its own task: dropping `waiting()` would drop the service
            // and cancel the request in flight at once.
            let service = tokio::spawn(running.waiting());
            tokio::select! {
                r = service => { r??; }
                _ = shutdown_signal() => {
                    // Let the request in flight finish, up to the grace period.
                    router.wait_idle(grace).await;
                    hangup.cancel();
                    // A cancelled call answers within a decode step; let it.
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                }
            }
        }
    }
    Ok(())
}

fn cores() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

fn load_config(path: &Path) -> anyhow::Result<Config> {
    load_config_placed(path, &Placement::AsWritten)
}

fn load_config_placed(path: &Path, placement: &Placement) -> anyhow::Result<Config> {
    Config::load_placed(path, placement).map_err(config_hint)
}

/// A config error, with where the config is looked for when it is missing.
fn config_hint(e: ConfigError) -> anyhow::Error {
    match e {
        e @ ConfigError::Read { .. } => anyhow::Error::new(e)
            .context("pass --config FILE or set XNAI_CONFIG (the default is ./tiers.yaml)"),
        e => e.into(),
    }
}
