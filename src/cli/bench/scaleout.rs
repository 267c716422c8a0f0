//! `bench scaleout`: what the Redis hop costs against a local call, and
//! the throughput of N concurrent requests with one worker against two, on
//! this machine, measured in one run. Workers are child processes of this
//! binary; Redis is the one given or a private `redis-server`.

use anyhow::{bail, Context};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use xnai_model_router::activity::Call;
use xnai_model_router::config::{Config, Placement};
use xnai_model_router::engine::llama::LlamaEngine;
use xnai_model_router::engine::{GenerateRequest, Message, Sampling};
use xnai_model_router::pool::TierPool;
use xnai_model_router::remote::wire::Job;
use xnai_model_router::remote::{Redis, RemoteTiers};

/// What to measure.
#[derive(Debug, Clone)]
pub struct ScaleoutOptions {
    pub config: PathBuf,
    /// Tier to serve (default: the smallest).
    pub tier: Option<String>,
    /// Concurrent requests per throughput round.
    pub requests: usize,
    pub max_tokens: u32,
    /// Interleaved local/remote pairs for the hop latency.
    pub samples: usize,
    /// An existing Redis; else a private redis-server is started.
    pub redis: Option<String>,
    /// Cores to share: one worker gets them all, two get half each.
    pub cores: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Hop {
    pub samples: usize,
    /// Median wall time of a local call (one pool in this process).
    pub local_median_ms: f64,
    /// Median wall time of the same call through Redis and a worker.
    pub remote_median_ms: f64,
    /// remote - local, at the median.
    pub added_median_ms: f64,
    /// Per remote call: wall time minus the worker's own load, prompt and
    /// generation time; median and 90th percentile.
    pub overhead_median_ms: f64,
    pub overhead_p90_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    pub workers: usize,
    pub threads_each: u32,
    pub requests: usize,
    pub wall_s: f64,
    pub tokens: u64,
    pub tokens_per_second: f64,
    pub requests_per_second: f64,
    /// Requests answered per worker.
    pub by_worker: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScaleoutReport {
    pub tier: String,
    pub max_tokens: u32,
    pub hop: Hop,
    pub one_worker: Throughput,
    pub two_workers: Throughput,
    /// two_workers.tokens_per_second / one_worker.tokens_per_second.
    pub ratio: f64,
}

/// Child processes killed on drop.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in self.0.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn start_redis(children: &mut Children) -> anyhow::Result<String> {
    let port = free_port()?;
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .context(
            "starting redis-server (scripts/install-deps.sh installs it; or pass --redis URL)",
        )?;
    children.0.push(child);
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if started.elapsed() > Duration::from_secs(10) {
            bail!("redis-server did not start on port {port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(format!("redis://127.0.0.1:{port}"))
}

fn start_worker(
    children: &mut Children,
    config: &Path,
    url: &str,
    tier: &str,
    id: &str,
    threads: u32,
) -> anyhow::Result<()> {
    let child = Command::new(std::env::current_exe()?)
        .args(["worker", "--redis", url, "--tiers", tier, "--id", id])
        .args(["--threads", &threads.to_string()])
        .arg("--config")
        .arg(config)
        .env("XNAI_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .context("starting a worker")?;
    children.0.push(child);
    Ok(())
}

async fn wait_for_workers(remote: &RemoteTiers, ids: &[&str]) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let st = remote.status();
        if ids
            .iter()
            .all(|id| st.workers.iter().any(|w| w.info.id == *id && w.healthy))
        {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("workers {ids:?} did not show up: {:?}", st.error);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn job(tier: &str, question: &str, max_tokens: u32) -> Job {
    let messages = vec![Message::new("user", question)];
    Job::new(tier, messages, max_tokens, Sampling::Greedy, None)
}

fn median(v: &mut [f64]) -> f64 {
    percentile(v, 0.5)
}

fn percentile(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

const QUESTIONS: [&str; 8] = [
    "Name three colors.",
    "Describe a cat in one sentence.",
    "What is the capital of France?",
    "Give me a word that rhymes with tree.",
    "Write a short greeting.",
    "Name a large animal.",
    "What do bees make?",
    "Say something about the sea.",
];

async fn throughput(
    remote: &RemoteTiers,
    tier: &str,
    requests: usize,
    max_tokens: u32,
    workers: usize,
    threads_each: u32,
) -> anyhow::Result<Throughput> {
    let started = Instant::now();
    let calls = (0..requests).map(|i| async move {
        let call = Call::default();
        let q = QUESTIONS[i % QUESTIONS.len()];
        remote.run(job(tier, q, max_tokens), &call).await
    });
    let served = futures::future::join_all(calls).await;
    let wall_s = started.elapsed().as_secs_f64();
    let mut tokens = 0u64;
    let mut by_worker = BTreeMap::new();
    for s in served {
        let s = s?;
        tokens += u64::from(s.generation.completion_tokens);
        *by_worker.entry(s.worker).or_insert(0) += 1;
    }
    Ok(Throughput {
        workers,
        threads_each,
        requests,
        wall_s,
        tokens,
        tokens_per_second: tokens as f64 / wall_s,
        requests_per_second: requests as f64 / wall_s,
        by_worker,
    })
}

/// Runs the whole measurement.
///
/// # Errors
///
/// When Redis, the workers or the models cannot be started.
pub async fn scaleout(opts: &ScaleoutOptions) -> anyhow::Result<ScaleoutReport> {
    let local_config = Arc::new(Config::load(&opts.config)?);
    let remote_config = Config::load_placed(&opts.config, &Placement::AllRemote)?;
    let tier = match &opts.tier {
        Some(t) => local_config
            .tier(t)
            .with_context(|| format!("unknown tier {t:?}"))?
            .name
            .clone(),
        None => local_config.tiers[0].name.clone(),
    };
    let mut children = Children(Vec::new());
    let url = match &opts.redis {
        Some(u) => u.clone(),
        None => start_redis(&mut children)?,
    };
    let remote = RemoteTiers::new(Redis::open(&url)?, remote_config.redis.clone());

    // The hop: the same short greedy call here and through a worker that
    // has all the cores, alternating so drift hits both alike.
    let mut config = (*local_config).clone();
    config.tiers.iter_mut().for_each(|t| t.threads = opts.cores);
    let pool = TierPool::new(LlamaEngine::new(), Arc::new(config));
    let index = pool.tier_index(&tier)?;
    start_worker(
        &mut children,
        &opts.config,
        &url,
        &tier,
        "bench-a",
        opts.cores,
    )?;
    wait_for_workers(&remote, &["bench-a"]).await?;
    let (mut local, mut remote_ms, mut overhead) = (Vec::new(), Vec::new(), Vec::new());
    let question = "Say hello.";
    for i in 0..opts.samples + 1 {
        let t = Instant::now();
        pool.run(index, GenerateRequest::greedy(question, 4))
            .await?;
        let l = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let s = remote
            .run(job(&tier, question, 4), &Call::default())
            .await?;
        let r = t.elapsed().as_secs_f64() * 1e3;
        if i == 0 {
            continue; // the first pair loads the models
        }
        local.push(l);
        remote_ms.push(r);
        overhead.push(r - s.load_ms - s.generation.prompt_ms - s.generation.generate_ms);
    }
    let (lm, rm) = (median(&mut local), median(&mut remote_ms));
    let hop = Hop {
        samples: opts.samples,
        local_median_ms: lm,
        remote_median_ms: rm,
        added_median_ms: rm - lm,
        overhead_median_ms: median(&mut overhead),
        overhead_p90_ms: percentile(&mut overhead, 0.9),
    };
    drop(pool);

    // Throughput: one worker with every core, then two with half each.
    throughput(&remote, &tier, 2, 4, 1, opts.cores).await?; // warm
    let one = throughput(
        &remote,
        &tier,
        opts.requests,
        opts.max_tokens,
        1,
        opts.cores,
    )
    .await?;
    let half = (opts.cores / 2).max(1);
    if let Some(mut a) = children.0.pop() {
        let _ = a.kill();
        let _ = a.wait();
    }
    start_worker(&mut children, &opts.config, &url, &tier, "bench-b", half)?;
    start_worker(&mut children, &opts.config, &url, &tier, "bench-c", half)?;
    wait_for_workers(&remote, &["bench-b", "bench-c"]).await?;
    throughput(&remote, &tier, 4, 4, 2, half).await?; // warm both
    let two = throughput(&remote, &tier, opts.requests, opts.max_tokens, 2, half).await?;
    let ratio = two.tokens_per_second / one.tokens_per_second;
    Ok(ScaleoutReport {
        tier,
        max_tokens: opts.max_tokens,
        hop,
        one_worker: one,
        two_workers: two,
        ratio,
    })
}

/// The report as a short table.
pub fn render(r: &ScaleoutReport) -> String {
    let h = &r.hop;
    let row = |t: &Throughput| {
        format!(
            "  {} worker(s) x {} thread(s): {} requests in {:.2} s, {:.1} tokens/s, {:.2} requests/s, by worker {:?}\n",
            t.workers, t.threads_each, t.requests, t.wall_s, t.tokens_per_second, t.requests_per_second, t.by_worker
        )
    };
    format!(
        "tier {}\nRedis hop ({} interleaved pairs, 4-token greedy calls):\n  local {:.2} ms, through Redis {:.2} ms: added {:.2} ms at the median\n  overhead per remote call (wall - worker's load+prompt+generate): median {:.2} ms, p90 {:.2} ms\nthroughput ({} tokens per request):\n{}{}ratio two workers / one worker: {:.2}x\n",
        r.tier,
        h.samples,
        h.local_median_ms,
        h.remote_median_ms,
        h.added_median_ms,
        h.overhead_median_ms,
        h.overhead_p90_ms,
        r.max_tokens,
        row(&r.one_worker),
        row(&r.two_workers),
        r.ratio
    )
}
