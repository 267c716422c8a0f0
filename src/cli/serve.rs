//! `serve` (MCP over stdio or HTTP, optionally with remote tiers) and
//! `worker` (serving tiers from Redis for a front end elsewhere).

use super::{config_hint, load_config_placed, runtime, shutdown_signal};
use anyhow::{bail, Context};
use clap::Args;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use xnai_model_router::config::{Config, Placement};
use xnai_model_router::http::HttpOptions;
use xnai_model_router::pool::TierPool;
use xnai_model_router::remote::{Redis, RemoteTiers, Worker, WorkerOptions};
use xnai_model_router::router::Router;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Transport {
    /// MCP over standard input/output (what MCP clients spawn).
    Stdio,
    /// MCP over HTTP: Streamable HTTP at /mcp and the older SSE transport at /sse.
    Http,
}

#[derive(Args)]
pub struct ServeArgs {
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
}

#[derive(Args)]
pub struct WorkerArgs {
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
    /// Jobs worked on at once, decoded together per tier (overrides the
    /// config's server.max_batch; each adds a KV sequence to the tiers'
    /// memory estimate).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    max_batch: Option<u32>,
}

/// `serve`: the MCP tools over stdio or HTTP until the client leaves or a
/// signal arrives.
pub fn serve(config_path: &Path, a: ServeArgs) -> anyhow::Result<()> {
    let placement = if a.all_remote {
        Placement::AllRemote
    } else {
        Placement::AsWritten
    };
    let config = Arc::new(load_config_placed(config_path, &placement)?);
    let remote_names: Vec<&str> = config
        .remote_tiers()
        .iter()
        .map(|t| t.name.as_str())
        .collect();
    let redis = match a.redis {
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
        bind: a.bind,
        token: read_token(a.token_file.as_deref())?,
        allow_hosts: a.allow_host,
        allow_origins: a.allow_origin,
    };
    let tiers = config.tier_names();
    let config_file =
        std::fs::canonicalize(&config.source).unwrap_or_else(|_| config.source.clone());
    let redis_settings = config.redis.clone();
    let rt = runtime()?;
    rt.block_on(async {
        let mut router = Router::new(super::engine(&config)?, config);
        if let Some(redis) = redis {
            router = router.with_remote(RemoteTiers::new(redis, redis_settings));
        }
        let router = Arc::new(router);
        match a.transport {
            Transport::Http => {
                let bind = http.bind;
                xnai_model_router::http::serve(router, http, shutdown_signal(), |addr| {
                    tracing::info!(%tiers, %addr, "serving MCP over HTTP");
                    eprintln!(
                        "xnai-model-router: MCP over HTTP on {addr}\n  Streamable HTTP: http://{addr}/mcp\n  SSE (older clients): http://{addr}/sse\n  health: http://{addr}/healthz   metrics: http://{addr}/metrics"
                    );
                })
                .await
                .with_context(|| format!("serving HTTP on {bind}"))
            }
            Transport::Stdio => {
                tracing::info!(%tiers, "serving MCP over stdio");
                if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                    eprintln!("{}", stdio_hint(&config_file));
                }
                xnai_model_router::mcp::serve_stdio(router, shutdown_signal())
                    .await
                    .context("serving MCP over stdio")
            }
        }
    })
}

/// What to do instead, for someone who started the stdio server by hand.
fn stdio_hint(config_file: &Path) -> String {
    let exe = std::env::current_exe()
        .map_or_else(|_| "xnai-model-router".into(), |p| p.display().to_string());
    format!(
        "xnai-model-router: MCP server on stdin/stdout, waiting for a client (Ctrl-C to stop).\n\
         Register it with an MCP client instead, e.g.:\n  \
         claude mcp add xnai-model-router -- {exe} serve --config {}\n\
         or try it with the MCP Inspector:\n  \
         npx @modelcontextprotocol/inspector --cli {exe} serve --method tools/list",
        config_file.display(),
    )
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

/// `worker`: serves tiers from Redis until SIGINT or SIGTERM, finishing
/// the job in hand.
pub fn worker(config_path: &Path, a: WorkerArgs) -> anyhow::Result<()> {
    let (mut config, served, skipped) =
        Config::load_for_worker(config_path, &a.tiers, a.max_batch).map_err(config_hint)?;
    if let Some(n) = a.threads {
        config.tiers.iter_mut().for_each(|t| t.threads = n);
    }
    for p in skipped {
        eprintln!("worker: not serving: {p}");
    }
    let redis = Redis::open(&a.redis)?;
    let opts = WorkerOptions {
        id: a
            .id
            .unwrap_or_else(xnai_model_router::remote::worker::default_id),
        tiers: served,
        settings: config.redis.clone(),
        max_batch: config.server.max_batch as usize,
    };
    let engine = super::engine(&config)?;
    runtime()?.block_on(async {
        let pool = TierPool::new(engine, Arc::new(config));
        let worker = Arc::new(Worker::new(pool, redis, opts));
        let stop = tokio_util::sync::CancellationToken::new();
        let on_signal = stop.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            on_signal.cancel();
        });
        worker.run(stop).await;
    });
    Ok(())
}
