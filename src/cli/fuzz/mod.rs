//! `fuzz-models`: mutated copies of real model files go, one after
//! another, on a tier of a running `serve` beside a good tier, over a real
//! MCP client (rmcp over stdio). Every call must end with an answer or a
//! tool error naming the tier, the good tier must answer after each, and
//! the server must never die. The report counts the mutants caught by the
//! Rust checks, by the probe, by llama.cpp's own errors, and those that
//! loaded and answered.
//!
//! Each model gets one server whose ladder has two tiers on the same
//! file: `good`, the original, and `mutant`, a symbolic link that is
//! pointed at each mutant in turn. `max_loaded: 1` makes the good tier's
//! call evict the mutant, so the next mutant is loaded afresh. Mutants
//! live in a temporary folder, one at a time.

mod mutate;

use anyhow::{bail, Context};
use clap::Args;
use mutate::{Kind, Layout, Mutation};
use rmcp::model::CallToolRequestParams;
use rmcp::service::RunningService;
use rmcp::transport::TokioChildProcess;
use rmcp::{RoleClient, ServiceExt};
use serde::Serialize;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use xnai_model_router::config::Config;
use xnai_model_router::engine::sampling::Rng;
use xnai_model_router::gguf;

#[derive(Args)]
pub struct FuzzArgs {
    /// Mutants in all, shared evenly among the models.
    #[arg(long, default_value_t = 40)]
    pub count: usize,
    /// Seed of the mutations: the same seed makes the same mutants.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// A model file to mutate (repeat for several). Default: each distinct
    /// model file of the config's local tiers.
    #[arg(long = "model")]
    pub models: Vec<PathBuf>,
    /// CPU threads per tier. Default: all cores.
    #[arg(long)]
    pub threads: Option<u32>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What happened to one mutant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Fate {
    /// The Rust GGUF checks refused it.
    Rust,
    /// The probe child died on it or reported an error.
    Probe,
    /// llama.cpp refused it with an error, in the server, after a good probe.
    LlamaError,
    /// It loaded and answered.
    Loaded,
    /// A tool error of another kind (still an error naming the tier).
    OtherError,
    /// The server died or stopped answering.
    ServerDied,
}

#[derive(Debug, Clone, Serialize)]
struct Case {
    model: String,
    index: usize,
    kind: Kind,
    bytes_changed: usize,
    truncated_to: Option<u64>,
    fate: Fate,
    /// The tool error, or what ended the server.
    message: Option<String>,
    ms: f64,
}

#[derive(Debug, Default, Serialize)]
struct Report {
    seed: u64,
    mutants: usize,
    server_deaths: usize,
    caught_by_rust_checks: usize,
    caught_by_probe: usize,
    refused_by_llama_cpp: usize,
    loaded_and_answered: usize,
    other_tool_errors: usize,
    /// Calls to the good tier after a mutant that did not answer.
    good_tier_failures: usize,
    seconds: f64,
    cases: Vec<Case>,
}

/// Runs the fuzz; fails (exit 1) if the server died or the good tier did
/// not answer after some mutant.
pub fn run(config: &Path, a: FuzzArgs) -> anyhow::Result<()> {
    let models = if a.models.is_empty() {
        distinct_models(&super::load_config(config)?)
    } else {
        a.models.clone()
    };
    if models.is_empty() || a.count == 0 {
        bail!("nothing to fuzz: give --count N (N > 0) and a model (--model FILE or a ladder with local tiers)");
    }
    let threads = a.threads.unwrap_or_else(super::cores);
    let started = Instant::now();
    let mut report = Report {
        seed: a.seed,
        ..Report::default()
    };
    let mut rng = Rng::new(a.seed);
    let rt = super::runtime()?;
    for (m, model) in models.iter().enumerate() {
        // The first models take the remainder, so the counts add up.
        let share = a.count / models.len() + usize::from(m < a.count % models.len());
        let work = tempfile::Builder::new()
            .prefix("xnai-fuzz-")
            .tempdir()
            .context("creating a folder for the mutants")?;
        let mut fuzz = ModelFuzz::new(model, work.path(), threads)?;
        rt.block_on(fuzz.run(share, &mut rng, &mut report))?;
    }
    report.seconds = started.elapsed().as_secs_f64();
    print_report(&report, a.json)?;
    if report.server_deaths > 0 || report.good_tier_failures > 0 {
        bail!(
            "{} server death(s), {} good-tier failure(s) in {} mutants",
            report.server_deaths,
            report.good_tier_failures,
            report.mutants
        );
    }
    Ok(())
}

/// Each distinct model file of the config's local tiers.
fn distinct_models(config: &Config) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for t in config.tiers.iter().filter(|t| !t.remote) {
        if !out.contains(&t.model) {
            out.push(t.model.clone());
        }
    }
    out
}

type Client = RunningService<RoleClient, ()>;

/// Longest a call may take before the server counts as hung.
const CALL_TIMEOUT: Duration = Duration::from_secs(300);

/// One model's fuzz: its server, ladder and mutants.
struct ModelFuzz {
    source: PathBuf,
    name: String,
    layout: Layout,
    /// The original's bytes where edits may land (all but the data), so
    /// each edit can be made to change its byte.
    head: Vec<u8>,
    dir: PathBuf,
    ladder: PathBuf,
    link: PathBuf,
}

impl ModelFuzz {
    fn new(source: &Path, dir: &Path, threads: u32) -> anyhow::Result<Self> {
        let info = gguf::inspect(source)
            .with_context(|| format!("{} must be a good model to fuzz", source.display()))?;
        let layout = Layout {
            size: info.file_bytes,
            tensor_table_at: info.tensor_table_at,
            data_at: info.data_at,
        };
        let mut head = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(std::fs::File::open(source)?, info.data_at),
            &mut head,
        )?;
        let link = dir.join("mutant.gguf");
        let fuzz = ModelFuzz {
            source: source.to_path_buf(),
            name: source
                .file_name()
                .map_or_else(|| "model".into(), |n| n.to_string_lossy().into_owned()),
            layout,
            head,
            dir: dir.to_path_buf(),
            ladder: dir.join("tiers.yaml"),
            link,
        };
        fuzz.point_at(source)?;
        std::fs::write(&fuzz.ladder, fuzz.ladder_yaml(threads))?;
        Ok(fuzz)
    }

    /// Two tiers on one file, one resident at a time; no KV states kept,
    /// verdicts in the work folder.
    fn ladder_yaml(&self, threads: u32) -> String {
        let dir = self.dir.display();
        format!(
            "memory:\n  budget: 16GB\n  reserve: 0GB\n  max_loaded: 1\n\
             routing:\n  max_escalations: 0\n  hand_over_draft: false\n\
             cache:\n  dir: {dir}/kv\n  max_bytes: 0\n\
             probe:\n  dir: {dir}/probes\n\
             tiers:\n\
             \x20 - name: good\n    role: router\n    model: {src}\n    threshold: 0.0\n    max_tokens: 8\n    context: 512\n    threads: {threads}\n\
             \x20 - name: mutant\n    role: expert\n    model: {link}\n    threshold: 0.01\n    max_tokens: 8\n    context: 512\n    threads: {threads}\n",
            src = self.source.display(),
            link = self.link.display(),
        )
    }

    /// Points the mutant tier's link at `file` (replacing it atomically).
    fn point_at(&self, file: &Path) -> std::io::Result<()> {
        let tmp = self.dir.join("mutant.gguf.new");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(file, &tmp)?;
        std::fs::rename(&tmp, &self.link)
    }

    async fn start(&self, log: &Path) -> anyhow::Result<Client> {
        let exe = std::env::current_exe()?;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.arg("serve")
            .arg("--config")
            .arg(&self.ladder)
            .env("XNAI_LOG", "error");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let (transport, _) = TokioChildProcess::builder(cmd).stderr(log).spawn()?;
        Ok(().serve(transport).await?)
    }

    async fn run(
        &mut self,
        count: usize,
        rng: &mut Rng,
        report: &mut Report,
    ) -> anyhow::Result<()> {
        let log = self.dir.join("serve.log");
        let mut client = self.start(&log).await?;
        for index in 0..count {
            let mutation = mutate::plan(&self.layout, index, rng, |at| {
                self.head.get(at as usize).copied().unwrap_or(0)
            });
            let file = self.dir.join(format!("m-{index}.gguf"));
            mutate::write(&self.source, &file, &mutation)?;
            self.point_at(&file)?;
            let started = Instant::now();
            let (fate, message) = match ask(&client, "mutant").await {
                Ok(Ok(_)) => (Fate::Loaded, None),
                Ok(Err(e)) => (classify(&e), Some(e)),
                Err(death) => (Fate::ServerDied, Some(with_last_words(death, &log))),
            };
            let mut good_failed = false;
            if fate != Fate::ServerDied {
                match ask(&client, "good").await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        good_failed = true;
                        eprintln!("fuzz: the good tier failed after mutant {index}: {e}");
                    }
                    Err(death) => {
                        good_failed = true;
                        eprintln!(
                            "fuzz: the server died on the good tier after mutant {index}: {death}"
                        );
                    }
                }
            }
            let case = Case {
                model: self.name.clone(),
                index,
                kind: mutation.kind,
                bytes_changed: mutation.edits.len(),
                truncated_to: mutation.truncate_to,
                fate,
                message,
                ms: started.elapsed().as_secs_f64() * 1e3,
            };
            eprintln!("{}", describe(&case, &mutation));
            tally(report, &case, good_failed);
            let _ = std::fs::remove_file(&file);
            if fate == Fate::ServerDied || good_failed {
                // Start over on a good file, or the ladder would not load.
                self.point_at(&self.source)?;
                let _ = client.cancel().await;
                client = self.start(&log).await?;
            }
        }
        self.point_at(&self.source)?;
        let _ = client.cancel().await;
        Ok(())
    }
}

/// One route_query on `tier`: Ok(Ok(answer)), Ok(Err(tool error)), or
/// Err(why the server is gone).
async fn ask(client: &Client, tier: &str) -> Result<Result<String, String>, String> {
    let args = json!({"query": "What is 2 + 2?", "preferred_tier": tier, "max_tokens": 8});
    let params = CallToolRequestParams::new("route_query")
        .with_arguments(args.as_object().cloned().unwrap_or_default());
    let result = match tokio::time::timeout(CALL_TIMEOUT, client.call_tool(params)).await {
        Err(_) => return Err(format!("no answer in {} s", CALL_TIMEOUT.as_secs())),
        Ok(Err(e)) => return Err(e.to_string()),
        Ok(Ok(r)) => r,
    };
    let text: String = result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join(" ");
    Ok(if result.is_error == Some(true) {
        Err(text)
    } else {
        Ok(text)
    })
}

/// Why the server went away, with the last line it wrote to its log.
fn with_last_words(death: String, log: &Path) -> String {
    let tail = std::fs::read(log)
        .ok()
        .and_then(|t| xnai_model_router::probe::child::last_line(&t));
    match tail {
        Some(line) => format!("{death}; the server's last log line: {line}"),
        None => death,
    }
}

/// Which check caught a mutant, from the tier's error message.
fn classify(error: &str) -> Fate {
    if error.contains("failed its probe") {
        Fate::Probe
    } else if error.contains("is not a usable model") {
        Fate::Rust
    } else if error.contains("llama.cpp could not") {
        Fate::LlamaError
    } else {
        Fate::OtherError
    }
}

fn tally(r: &mut Report, case: &Case, good_failed: bool) {
    r.mutants += 1;
    match case.fate {
        Fate::Rust => r.caught_by_rust_checks += 1,
        Fate::Probe => r.caught_by_probe += 1,
        Fate::LlamaError => r.refused_by_llama_cpp += 1,
        Fate::Loaded => r.loaded_and_answered += 1,
        Fate::OtherError => r.other_tool_errors += 1,
        Fate::ServerDied => r.server_deaths += 1,
    }
    r.good_tier_failures += usize::from(good_failed);
    r.cases.push(case.clone());
}

fn describe(case: &Case, m: &Mutation) -> String {
    let change = match m.truncate_to {
        Some(len) => format!("cut to {len} bytes"),
        None => format!("{} byte(s) changed", m.edits.len()),
    };
    let fate = serde_json::to_value(case.fate)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let mut line = format!(
        "fuzz {} #{} {:?}, {change}: {fate} ({:.0} ms)",
        case.model, case.index, case.kind, case.ms
    );
    if let Some(msg) = &case.message {
        line.push_str(": ");
        line.extend(msg.lines().next().unwrap_or_default().chars().take(400));
    }
    line
}

fn print_report(r: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    println!(
        "fuzz-models (seed {}): {} mutants in {:.0} s\n\
         \x20 server deaths:          {}\n\
         \x20 caught by Rust checks:  {}\n\
         \x20 caught by the probe:    {}\n\
         \x20 refused by llama.cpp:   {}\n\
         \x20 loaded and answered:    {}\n\
         \x20 other tool errors:      {}\n\
         \x20 good tier failures:     {}",
        r.seed,
        r.mutants,
        r.seconds,
        r.server_deaths,
        r.caught_by_rust_checks,
        r.caught_by_probe,
        r.refused_by_llama_cpp,
        r.loaded_and_answered,
        r.other_tool_errors,
        r.good_tier_failures
    );
    Ok(())
}
