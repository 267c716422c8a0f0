//! Scale-out over Redis Streams with real Redis, real models and real
//! processes: a front end (`serve --redis`, driven over MCP by rmcp's
//! client) and `worker` processes. Each test starts its own `redis-server`
//! (the Debian package; scripts/install-deps.sh installs it) on a free
//! loopback port and stops it at the end.

mod common;

use common::client::{answer, call, ok, tokens_flowing, tool_request, Recorder};
use common::SMOL_Q4;
use redis::AsyncCommands;
use rmcp::model::CallToolResult;
use rmcp::service::{PeerRequestOptions, RunningService};
use rmcp::transport::TokioChildProcess;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use xnai_model_router::remote::wire::{unix_ms, worker_key, WorkerInfo};

/// One scenario at a time: each runs several llama.cpp processes.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const BIN: &str = env!("CARGO_BIN_EXE_xnai-model-router");

/// Counting in words: long enough to act in the middle of it.
const LONG: &str = "Write a long story about a lighthouse keeper and the sea, with many chapters.";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A redis-server of our own, killed on drop.
struct RedisServer {
    port: u16,
    child: Child,
}

impl RedisServer {
    fn start() -> Self {
        Self::on(free_port())
    }

    fn on(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is missing: run scripts/install-deps.sh");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        RedisServer { port, child }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn con(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    /// Kills it (no save) and starts an empty one on the same port.
    fn restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        *self = Self::on(self.port);
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `worker` process, killed on drop; its log is kept for failures.
struct WorkerProc {
    id: String,
    child: Child,
    log: PathBuf,
}

impl WorkerProc {
    /// A worker that takes one job at a time (what the takeover and
    /// sharing tests count on).
    fn start(dir: &Path, config: &Path, url: &str, id: &str, tiers: &str) -> Self {
        Self::start_with(dir, config, url, id, tiers, &["--max-batch", "1"])
    }

    fn start_with(
        dir: &Path,
        config: &Path,
        url: &str,
        id: &str,
        tiers: &str,
        extra: &[&str],
    ) -> Self {
        let log = dir.join(format!("{id}.log"));
        let child = Command::new(BIN)
            .env("XDG_DATA_HOME", common::fresh_data_home())
            .args(["worker", "--redis", url, "--tiers", tiers, "--id", id])
            .args(extra)
            // Two workers share this machine's cores.
            .args(["--threads", "1"])
            .arg("--config")
            .arg(config)
            .env("XNAI_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        WorkerProc {
            id: id.into(),
            child,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// router (local) and drafter (remote): thresholds no answer of these tiny
/// models meets, so a request starting at the router escalates to the
/// remote drafter. Short Redis timings so reclaiming is quick.
fn ladder(dir: &Path) -> PathBuf {
    ladder_with(dir, "")
}

/// [`ladder`] with more `redis:` settings (indented lines).
fn ladder_with(dir: &Path, redis: &str) -> PathBuf {
    let model = common::real_model(SMOL_Q4);
    let yaml = format!(
        r#"redis:
  claim_idle_ms: 1500
  heartbeat_secs: 1
  outage_secs: 10
{redis}tiers:
  - name: router
    role: router
    model: {m}
    threshold: 0.999
    max_tokens: 24
    context: 1024
  - name: drafter
    role: draft
    model: {m}
    threshold: 0.9999
    max_tokens: 48
    context: 1024
    remote: true
"#,
        m = model.display()
    );
    let path = dir.join("tiers.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

type Client = RunningService<RoleClient, Recorder>;

async fn front_end(config: &Path, url: &str) -> (Client, Recorder) {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.env("XDG_DATA_HOME", common::fresh_data_home());
    cmd.arg("serve")
        .arg("--config")
        .arg(config)
        .args(["--redis", url])
        .env("XNAI_LOG", "warn");
    let recorder = Recorder::default();
    let client = recorder
        .clone()
        .serve(TokioChildProcess::new(cmd).unwrap())
        .await
        .unwrap();
    (client, recorder)
}

fn error_text(r: &CallToolResult) -> String {
    assert_eq!(
        r.is_error,
        Some(true),
        "expected a tool error: {:?}",
        r.content
    );
    r.content[0].as_text().unwrap().text.clone()
}

/// Waits until get_tier_status lists these workers as healthy.
async fn wait_for_workers(client: &Client, ids: &[&str]) {
    let started = Instant::now();
    loop {
        let s = ok(&call(client, "get_tier_status", json!({})).await);
        let healthy: Vec<String> = s["remote"]["workers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|w| w["healthy"] == true)
            .map(|w| w["id"].as_str().unwrap().to_string())
            .collect();
        if ids.iter().all(|id| healthy.iter().any(|h| h == id)) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "workers {ids:?} never showed up: {s}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn pending(con: &mut redis::aio::MultiplexedConnection, tier: &str) -> u64 {
    let reply: redis::streams::StreamPendingReply = con
        .xpending(format!("xnai:jobs:{tier}"), "workers")
        .await
        .unwrap();
    reply.count() as u64
}

/// Every stored result, parsed.
async fn results(con: &mut redis::aio::MultiplexedConnection) -> Vec<Value> {
    let keys: Vec<String> = con.keys("xnai:result:*").await.unwrap();
    let mut out = Vec::new();
    for k in keys {
        let v: String = con.get(&k).await.unwrap();
        out.push(serde_json::from_str(&v).unwrap());
    }
    out
}

/// A front end, workers of the remote drafter tier, and a Redis of their own.
struct Scene {
    _dir: tempfile::TempDir,
    redis: RedisServer,
    workers: Vec<WorkerProc>,
    client: Client,
    recorder: Recorder,
}

impl Scene {
    /// `redis` adds settings to the ladder's `redis:` section.
    async fn start(redis: &str, workers: &[&str]) -> Scene {
        let dir = tempfile::tempdir().unwrap();
        let config = ladder_with(dir.path(), redis);
        let redis = RedisServer::start();
        let workers: Vec<WorkerProc> = workers
            .iter()
            .map(|id| WorkerProc::start(dir.path(), &config, &redis.url(), id, "drafter"))
            .collect();
        let (client, recorder) = front_end(&config, &redis.url()).await;
        let ids: Vec<&str> = workers_ids(&workers);
        wait_for_workers(&client, &ids).await;
        Scene {
            _dir: dir,
            redis,
            workers,
            client,
            recorder,
        }
    }

    /// Sends the long counting prompt to the drafter; returns once a worker
    /// reports tokens, with the index of that worker.
    async fn long_request(
        &self,
        max_tokens: u32,
    ) -> (rmcp::service::RequestHandle<RoleClient>, usize) {
        let handle = self
            .client
            .send_cancellable_request(
                tool_request(
                    "route_query",
                    json!({"query": LONG, "preferred_tier": "drafter", "max_tokens": max_tokens}),
                ),
                PeerRequestOptions::no_options(),
            )
            .await
            .unwrap();
        self.recorder
            .wait_for(|m| m.contains("on worker") && tokens_flowing(m))
            .await;
        let message = self
            .recorder
            .progress
            .lock()
            .unwrap()
            .last()
            .unwrap()
            .1
            .clone();
        let busy = self
            .workers
            .iter()
            .position(|w| message.contains(&format!("on worker {}:", w.id)))
            .unwrap_or_else(|| panic!("which worker? {message}"));
        (handle, busy)
    }

    /// A short question to the remote tier; its result.
    async fn ask_drafter(&self) -> Value {
        ok(&call(
            &self.client,
            "route_query",
            json!({"query": "Name a color.", "preferred_tier": "drafter", "max_tokens": 8}),
        )
        .await)
    }

    /// No job of the drafter pending, and what Redis stored.
    async fn settled(&self) -> Vec<Value> {
        let mut con = self.redis.con().await;
        assert_eq!(
            pending(&mut con, "drafter").await,
            0,
            "entries left pending"
        );
        results(&mut con).await
    }

    async fn dead_letters(&self, at_least: usize) -> Vec<redis::streams::StreamId> {
        let mut con = self.redis.con().await;
        let started = Instant::now();
        loop {
            let d: redis::streams::StreamRangeReply = con.xrange_all("xnai:dead").await.unwrap();
            if d.ids.len() >= at_least {
                return d.ids;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "{:?}", d.ids);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn workers_ids(workers: &[WorkerProc]) -> Vec<&str> {
    workers.iter().map(|w| w.id.as_str()).collect()
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig}");
}

#[tokio::test]
async fn one_worker_answers_several_remote_attempts_at_once() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let config = ladder(dir.path());
    let redis = RedisServer::start();
    let worker = WorkerProc::start_with(
        dir.path(),
        &config,
        &redis.url(),
        "big",
        "drafter",
        &["--max-batch", "4"],
    );
    let (client, _) = front_end(&config, &redis.url()).await;
    wait_for_workers(&client, &["big"]).await;
    let status = ok(&call(&client, "get_tier_status", json!({})).await);
    let listed = status["remote"]["workers"][0].to_string();
    assert!(listed.contains("\"max_batch\":4"), "{listed}");
    let questions = [
        "Count from one to ten.",
        "Name four colours.",
        "List three animals.",
        "Name two rivers.",
    ];
    let calls = questions.iter().map(|q| {
        call(
            &client,
            "route_query",
            json!({"query": q, "preferred_tier": "drafter", "max_tokens": 40}),
        )
    });
    let answers: Vec<Value> = futures::future::join_all(calls)
        .await
        .iter()
        .map(ok)
        .collect();
    let widths: Vec<f64> = answers
        .iter()
        .map(|a| {
            assert_eq!(a["attempts"][0]["worker"], "big", "{a}");
            a["attempts"][0]["batch_width"].as_f64().unwrap()
        })
        .collect();
    assert!(
        widths.iter().any(|&w| w > 1.0),
        "the worker decoded its jobs one at a time: {widths:?}\n{}",
        worker.log()
    );
    let mut con = redis.con().await;
    assert_eq!(pending(&mut con, "drafter").await, 0);
}

#[tokio::test]
async fn two_workers_share_requests_and_escalation_crosses_machines() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let scene = Scene::start("", &["w1", "w2"]).await;
    let client = &scene.client;

    // Four at once on the remote tier: both workers answer some.
    let questions = [
        "Name a color.",
        "Name a fruit.",
        "Name an animal.",
        "Name a city.",
    ];
    let calls = questions.iter().map(|q| {
        call(
            client,
            "route_query",
            json!({"query": q, "preferred_tier": "drafter", "max_tokens": 24}),
        )
    });
    let answers: Vec<Value> = futures::future::join_all(calls)
        .await
        .iter()
        .map(ok)
        .collect();
    let mut by: Vec<String> = answers
        .iter()
        .map(|a| {
            assert_eq!(a["tier"], "drafter");
            assert!(!a["answer"].as_str().unwrap().is_empty(), "{a}");
            a["attempts"][0]["worker"].as_str().unwrap().to_string()
        })
        .collect();
    by.sort();
    by.dedup();
    assert_eq!(by, ["w1", "w2"], "requests did not spread: {answers:?}");

    // A query the classifier starts at the (local) router escalates to the
    // remote drafter, with the router's answer handed over in the job.
    let r = ok(&call(
        client,
        "route_query",
        json!({"query": "What is 2+2?", "max_tokens": 16}),
    )
    .await);
    let attempts = r["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{r}");
    assert_eq!(attempts[0]["tier"], "router");
    assert!(attempts[0].get("worker").is_none(), "{r}");
    assert_eq!(attempts[0]["outcome"], "escalated");
    assert_eq!(attempts[1]["tier"], "drafter");
    assert!(["w1", "w2"].contains(&attempts[1]["worker"].as_str().unwrap()));
    assert_eq!(r["tier"], "drafter");
    let mut con = scene.redis.con().await;
    let jobs: redis::streams::StreamRangeReply = con.xrange_all("xnai:jobs:drafter").await.unwrap();
    let handed: Vec<Value> = jobs
        .ids
        .iter()
        .filter_map(|e| e.get::<String>("job"))
        .map(|j| serde_json::from_str::<Value>(&j).unwrap())
        .filter(|j| j.get("handoff").is_some())
        .collect();
    assert_eq!(handed.len(), 1, "{handed:?}");
    let h = &handed[0]["handoff"];
    assert_eq!(h["from_tier"], "router");
    assert_eq!(h["confidence"], attempts[0]["confidence"]);
    assert!(!h["draft"].as_str().unwrap().is_empty());
    // Verified by the worker (routing.handoff: verify): the messages are
    // the plain question, and the attempt reports what became of the draft.
    assert_eq!(h["verify"], true);
    let last = handed[0]["messages"].as_array().unwrap().last().unwrap()["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!last.contains("Draft:"), "{last}");
    assert_eq!(attempts[1]["handoff"]["from_tier"], "router", "{r}");

    // Progress came from the workers.
    let seen = scene.recorder.progress.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|(_, m)| m.starts_with("tier drafter on worker w")),
        "{seen:?}"
    );
    // Status shows both workers on the remote tier; nothing left pending.
    let s = ok(&call(client, "get_tier_status", json!({})).await);
    let drafter = &s["tiers"][1];
    assert_eq!(drafter["remote"], true);
    assert_eq!(drafter["workers"], json!(["w1", "w2"]), "{s}");
    assert_eq!(s["remote"]["reachable"], true);
    assert_eq!(scene.settled().await.len(), 5);
    scene.client.cancel().await.unwrap();
}

#[tokio::test]
async fn a_worker_killed_mid_answer_loses_nothing() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut scene = Scene::start("", &["w1", "w2"]).await;
    let (handle, busy) = scene.long_request(200).await;
    let mut dead = scene.workers.remove(busy);
    dead.child.kill().unwrap(); // SIGKILL: no goodbye, the entry stays pending
    dead.child.wait().unwrap();
    let killed_at = Instant::now();
    let survivor = &scene.workers[0];

    let r = ok(&answer(handle).await);
    let took = killed_at.elapsed();
    assert_eq!(r["attempts"][0]["worker"], survivor.id.as_str(), "{r}");
    assert_eq!(r["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(r["tokens"]["completion"], 200, "a whole answer: {r}");
    assert!(
        survivor.log().contains("took over a job"),
        "{}",
        survivor.log()
    );
    // Progress went on from the survivor, still increasing.
    let seen = scene.recorder.progress.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|(_, m)| m.contains(&format!("on worker {}", survivor.id))),
        "{seen:?}"
    );
    for w in seen.windows(2) {
        assert!(w[1].0 > w[0].0, "{seen:?}");
    }
    // Exactly one answer stored, by the survivor; nothing pending.
    let stored = scene.settled().await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0]["worker"], survivor.id.as_str());
    eprintln!("the survivor answered {took:?} after the kill");
    scene.client.cancel().await.unwrap();
}

#[tokio::test]
async fn a_hung_worker_is_taken_over_and_its_late_answer_is_dropped() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let scene = Scene::start("", &["w1", "w2"]).await;
    let (handle, busy) = scene.long_request(120).await;
    let (hung, survivor) = (&scene.workers[busy], &scene.workers[1 - busy]);
    signal(&hung.child, "-STOP");
    let r = ok(&answer(handle).await);
    assert_eq!(r["attempts"][0]["worker"], survivor.id.as_str(), "{r}");
    // The hung worker wakes up, finishes, and finds the answer taken.
    signal(&hung.child, "-CONT");
    let started = Instant::now();
    while !hung
        .log()
        .contains("another worker stored this result first")
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{}",
            hung.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stored = scene.settled().await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0]["worker"], survivor.id.as_str());
    scene.client.cancel().await.unwrap();
}

#[tokio::test]
async fn a_job_its_workers_keep_dying_on_is_failed_not_retried_forever() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut scene = Scene::start("  max_deliveries: 1\n", &["w1", "w2"]).await;
    let (handle, busy) = scene.long_request(200).await;
    let mut dead = scene.workers.remove(busy);
    dead.child.kill().unwrap();
    dead.child.wait().unwrap();
    let e = error_text(&answer(handle).await);
    assert!(
        e.contains("delivered 2 times without an answer") && e.contains("max_deliveries is 1"),
        "{e}"
    );
    let dead = scene.dead_letters(1).await;
    assert_eq!(dead.len(), 1);
    assert!(dead[0]
        .get::<String>("reason")
        .unwrap()
        .contains("delivered 2 times"));
    scene.settled().await;
    scene.client.cancel().await.unwrap();
}

#[tokio::test]
async fn cancellation_reaches_the_worker() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let scene = Scene::start("", &["w1"]).await;
    let (handle, _) = scene.long_request(400).await;
    handle.cancel(Some("test".into())).await.unwrap();
    // The worker stops early and says so in its stored result.
    let mut con = scene.redis.con().await;
    let started = Instant::now();
    let stored = loop {
        let r = results(&mut con).await;
        if !r.is_empty() {
            break r;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no result");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let g = &stored[0]["outcome"]["generation"];
    assert_eq!(g["finish"], "cancelled", "{stored:?}");
    assert!(g["completion_tokens"].as_u64().unwrap() < 400);
    scene.settled().await;
    // The next request is answered.
    assert_eq!(scene.ask_drafter().await["attempts"][0]["worker"], "w1");
    scene.client.cancel().await.unwrap();
}

#[tokio::test]
async fn redis_restarted_mid_run_then_the_next_request_succeeds() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut scene = Scene::start("", &["w1"]).await;
    // Two at once leave the front end two connections to reuse, which the
    // restart will kill.
    futures::future::join(scene.ask_drafter(), scene.ask_drafter()).await;
    let (handle, _) = scene.long_request(48).await;
    scene.redis.restart(); // no persistence: every stream, group and key is gone
    let r = answer(handle).await;
    // In flight: completed after reconnection, or a clear error.
    if r.is_error == Some(true) {
        let e = error_text(&r);
        assert!(
            e.contains("lost the request") && e.contains(&scene.redis.url()),
            "{e}"
        );
        eprintln!("in flight during the restart: {e}");
    } else {
        assert_eq!(ok(&r)["attempts"][0]["worker"], "w1");
        eprintln!("in flight during the restart: completed");
    }
    // The next requests succeed: the worker re-created its group and
    // re-advertised itself, the front end reconnected.
    for _ in 0..3 {
        assert_eq!(scene.ask_drafter().await["attempts"][0]["worker"], "w1");
    }
    let log = scene.workers[0].log();
    assert!(
        log.contains("reconnecting") || log.contains("creating it again"),
        "{log}"
    );
    scene.client.cancel().await.unwrap();
}

#[tokio::test]
async fn poison_messages_go_to_the_dead_letter_stream() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let scene = Scene::start("", &["w1"]).await;
    let mut con = scene.redis.con().await;
    let _: String = con
        .xadd("xnai:jobs:drafter", "*", &[("job", "{not json")])
        .await
        .unwrap();
    let _: String = con
        .xadd("xnai:jobs:drafter", "*", &[("something", "else")])
        .await
        .unwrap();
    let dead = scene.dead_letters(2).await;
    let reasons: Vec<String> = dead.iter().map(|e| e.get("reason").unwrap()).collect();
    assert!(reasons[0].contains("not a valid job"), "{reasons:?}");
    assert!(reasons[1].contains("no `job` field"), "{reasons:?}");
    assert_eq!(
        dead[0].get::<String>("stream").unwrap(),
        "xnai:jobs:drafter"
    );
    assert!(
        scene.settled().await.is_empty(),
        "acknowledged, not retried"
    );
    // The worker goes on serving.
    assert_eq!(scene.ask_drafter().await["attempts"][0]["worker"], "w1");
    scene.client.cancel().await.unwrap();
}

#[tokio::test]
async fn without_redis_local_tiers_answer_and_remote_ones_say_why() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let config = ladder(dir.path());
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let (client, _) = front_end(&config, &url).await;
    let r = ok(&call(
        &client,
        "route_query",
        json!({"query": "Name a color.", "preferred_tier": "router", "max_tokens": 8}),
    )
    .await);
    assert_eq!(r["tier"], "router");
    let e = error_text(
        &call(
            &client,
            "route_query",
            json!({"query": "Name a color.", "preferred_tier": "drafter", "max_tokens": 8}),
        )
        .await,
    );
    assert!(
        e.contains("tier drafter") && e.contains(&url) && e.contains("unreachable"),
        "{e}"
    );
    let s = ok(&call(&client, "get_tier_status", json!({})).await);
    assert_eq!(s["remote"]["reachable"], false, "{s}");
    assert!(s["remote"]["error"].is_string());

    // Redis and a worker come up: the front end reconnects by itself.
    let redis = RedisServer::on(port);
    let _w = WorkerProc::start(dir.path(), &config, &redis.url(), "w1", "drafter");
    wait_for_workers(&client, &["w1"]).await;
    let r = ok(&call(
        &client,
        "route_query",
        json!({"query": "Name a color.", "preferred_tier": "drafter", "max_tokens": 8}),
    )
    .await);
    assert_eq!(r["attempts"][0]["worker"], "w1");
    client.cancel().await.unwrap();
}

/// Runs the binary with `args` and the ladder; it must fail; its stderr.
fn fails(config: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .env("XDG_DATA_HOME", common::fresh_data_home())
        .args(args)
        .arg("--config")
        .arg(config)
        .env_remove("XNAI_REDIS_URL")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "{args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn remote_tiers_need_redis_and_workers_need_known_tiers() {
    let dir = tempfile::tempdir().unwrap();
    let config = ladder(dir.path());
    let err = fails(&config, &["serve"]);
    assert!(
        err.contains("tiers drafter are remote") && err.contains("--redis"),
        "{err}"
    );
    let err = fails(
        &config,
        &[
            "worker",
            "--redis",
            "redis://127.0.0.1:1",
            "--tiers",
            "nope",
        ],
    );
    assert!(
        err.contains("--tiers") && err.contains("unknown tier \"nope\""),
        "{err}"
    );
    let err = fails(&config, &["worker", "--redis", "http://x"]);
    assert!(err.contains("is not a Redis URL"), "{err}");
}

#[tokio::test]
async fn a_worker_stopped_with_sigterm_finishes_its_job_first() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let mut scene = Scene::start("", &["w1"]).await;
    let (handle, _) = scene.long_request(120).await;
    signal(&scene.workers[0].child, "-TERM");
    let r = ok(&answer(handle).await);
    assert_eq!(r["attempts"][0]["worker"], "w1");
    assert_eq!(r["tokens"]["completion"], 120, "the whole answer: {r}");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = scene.workers[0].child.try_wait().unwrap() {
            break s;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "still running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    // It took its heartbeat with it, and left nothing pending.
    let mut con = scene.redis.con().await;
    let alive: bool = con.exists("xnai:worker:w1").await.unwrap();
    assert!(!alive);
    assert_eq!(scene.settled().await.len(), 1);
    scene.client.cancel().await.unwrap();
}

#[tokio::test]
async fn a_job_trimmed_from_a_backlog_is_reported_lost() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let config = ladder_with(dir.path(), "  stream_maxlen: 1\n");
    let redis = RedisServer::start();
    let mut con = redis.con().await;
    // A worker that advertises the tier but never reads: the job waits.
    let ghost = WorkerInfo {
        id: "ghost".into(),
        host: "h".into(),
        pid: 1,
        tiers: vec!["drafter".into()],
        resident: Vec::new(),
        estimated_bytes: 0,
        process_rss: 0,
        busy: None,
        jobs_in_hand: 0,
        max_batch: 1,
        jobs_done: 0,
        started_unix_ms: 0,
        heartbeat_unix_ms: unix_ms(),
        heartbeat_secs: 60,
    };
    let ghost = serde_json::to_string(&ghost).unwrap();
    let _: () = con.set_ex(worker_key("ghost"), ghost, 120).await.unwrap();
    let (client, _) = front_end(&config, &redis.url()).await;
    let handle = client
        .send_cancellable_request(
            tool_request(
                "route_query",
                json!({"query": "Name a color.", "preferred_tier": "drafter", "max_tokens": 8}),
            ),
            PeerRequestOptions::no_options(),
        )
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let n: u64 = con.xlen("xnai:jobs:drafter").await.unwrap();
        if n >= 1 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never enqueued"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A backlog pushes it out of the capped stream (XADD MAXLEN ~ 1).
    let mut pipe = redis::pipe();
    for _ in 0..300 {
        pipe.cmd("XADD")
            .arg("xnai:jobs:drafter")
            .arg("MAXLEN")
            .arg("~")
            .arg(1)
            .arg("*")
            .arg("filler")
            .arg("x")
            .ignore();
    }
    let _: () = pipe.query_async(&mut con).await.unwrap();
    let trimmed_at = Instant::now();
    let e = error_text(&answer(handle).await);
    assert!(
        e.contains("lost the request") && e.contains("stream_maxlen"),
        "{e}"
    );
    assert!(
        trimmed_at.elapsed() < Duration::from_secs(8),
        "{:?}",
        trimmed_at.elapsed()
    );
    client.cancel().await.unwrap();
}
