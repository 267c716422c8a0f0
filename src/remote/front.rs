//! The front end's side: runs one cascade attempt on a remote tier by
//! enqueueing it, relays the worker's progress and the caller's
//! cancellation, and reads the result once. A monitor task keeps the list
//! of live workers and whether Redis answers, for get_tier_status.

use super::conn::{is_connection_error, Backoff, Redis};
use super::wire::{
    cancel_key, events_key, jobs_key, result_key, unix_ms, Event, Job, JobOutcome, JobResult,
    WorkerInfo, WORKER_PATTERN,
};
use crate::activity::Call;
use crate::config::RedisSettings;
use crate::engine::{EngineError, Generation, Progress};
use crate::error::Error;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamMaxlen, StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::AsyncCommands;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a quiet attempt checks that Redis still holds its job.
const LOST_CHECK: Duration = Duration::from_secs(5);
/// How long a cancelled attempt waits for the worker to confirm.
const CANCEL_CONFIRM: Duration = Duration::from_secs(3);

/// Failures of remote tiers, each naming the tier and what to do.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("tier {tier} is remote (remote: true) but this server has no Redis: start it with --redis URL")]
    NoRedis { tier: String },
    #[error("tier {tier} is served through Redis at {url}, which is unreachable: {reason}")]
    Unreachable {
        tier: String,
        url: String,
        reason: String,
    },
    #[error("tier {tier}: no live worker serves it (no heartbeat at {url}); start one: xnai-model-router worker --redis URL --tiers {tier}")]
    NoWorker { tier: String, url: String },
    #[error("tier {tier}: Redis at {url} lost the request (restarted without persistence, or trimmed from a job stream longer than redis.stream_maxlen); send it again")]
    Lost { tier: String, url: String },
    #[error(
        "tier {tier}: no answer from the workers within {secs} s (redis.request_timeout_secs)"
    )]
    Timeout { tier: String, secs: u64 },
    #[error("tier {tier} on worker {worker}: {message}")]
    Failed {
        tier: String,
        worker: String,
        message: String,
    },
    #[error("tier {tier}: unreadable result from the workers: {reason}")]
    BadResult { tier: String, reason: String },
}

/// A remote attempt's answer and where it came from.
#[derive(Debug, Clone)]
pub struct Served {
    pub generation: Generation,
    pub worker: String,
    pub load_ms: f64,
    /// From enqueue until a worker took it.
    pub wait_ms: f64,
}

/// Redis and its workers, as get_tier_status shows them.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RemoteStatus {
    /// The Redis URL, password masked.
    pub url: String,
    pub reachable: bool,
    /// Why the last check failed, while unreachable.
    pub error: Option<String>,
    pub workers: Vec<WorkerHealth>,
}

/// One worker as last seen.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct WorkerHealth {
    #[serde(flatten)]
    pub info: WorkerInfo,
    /// Milliseconds since its last heartbeat.
    pub heartbeat_age_ms: u64,
    /// Heartbeat younger than two intervals.
    pub healthy: bool,
}

#[derive(Debug, Default)]
struct Health {
    reachable: bool,
    error: Option<String>,
    workers: Vec<WorkerInfo>,
}

/// The remote tiers of one front end.
pub struct RemoteTiers {
    redis: Redis,
    /// Connections of finished attempts, reused (each attempt blocks on
    /// its own while it waits for events).
    idle: Mutex<Vec<MultiplexedConnection>>,
    /// Attempts waiting on workers now (for a graceful shutdown).
    in_flight: std::sync::atomic::AtomicUsize,
    settings: RedisSettings,
    health: Arc<Mutex<Health>>,
    monitor: tokio::task::JoinHandle<()>,
}

impl Drop for RemoteTiers {
    fn drop(&mut self) {
        self.monitor.abort();
    }
}

impl RemoteTiers {
    /// Starts the monitor (inside a Tokio runtime). Never fails on an
    /// unreachable Redis: remote tiers then answer with a clear error.
    pub fn new(redis: Redis, settings: RedisSettings) -> Self {
        let health = Arc::new(Mutex::new(Health::default()));
        let monitor = tokio::spawn(monitor(redis.clone(), settings.clone(), health.clone()));
        RemoteTiers {
            redis,
            idle: Mutex::default(),
            in_flight: Default::default(),
            settings,
            health,
            monitor,
        }
    }

    /// Attempts waiting on workers now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// What the monitor saw last.
    pub fn status(&self) -> RemoteStatus {
        let h = self.health.lock().unwrap();
        let now = unix_ms();
        RemoteStatus {
            url: self.redis.shown.clone(),
            reachable: h.reachable,
            error: h.error.clone(),
            workers: h
                .workers
                .iter()
                .map(|w| {
                    let age = now.saturating_sub(w.heartbeat_unix_ms);
                    WorkerHealth {
                        healthy: age <= 2000 * w.heartbeat_secs.max(1),
                        heartbeat_age_ms: age,
                        info: w.clone(),
                    }
                })
                .collect(),
        }
    }

    fn unreachable(&self, tier: &str, e: impl ToString) -> Error {
        RemoteError::Unreachable {
            tier: tier.into(),
            url: self.redis.shown.clone(),
            reason: e.to_string(),
        }
        .into()
    }

    /// Runs `job` on a worker of its tier and waits for the result,
    /// relaying progress into `call.activity` and `call.cancel` to the worker.
    ///
    /// # Errors
    ///
    /// [`RemoteError`] when Redis is unreachable, no worker serves the tier,
    /// the request was lost or timed out, or the worker failed;
    /// [`Error::Cancelled`]; [`EngineError::PromptTooLong`] from the worker.
    pub async fn run(&self, job: Job, call: &Call) -> Result<Served, Error> {
        let tier = job.tier.clone();
        let started = Instant::now();
        call.activity.waiting_for_worker(&tier);
        let mut reused = self.idle.lock().unwrap().pop();
        // A connection kept from before a Redis restart is dead: check.
        if let Some(c) = reused.as_mut() {
            if redis::cmd("PING").query_async::<()>(c).await.is_err() {
                reused = None;
            }
        }
        let mut con = match reused {
            Some(c) => c,
            None => self
                .redis
                .connect()
                .await
                .map_err(|e| self.unreachable(&tier, e))?,
        };
        use std::sync::atomic::Ordering::SeqCst;
        self.in_flight.fetch_add(1, SeqCst);
        let outcome = self.attempt(job, call, &mut con, started).await;
        self.in_flight.fetch_sub(1, SeqCst);
        // A connection that failed is dropped; the next attempt opens one.
        if !matches!(
            &outcome,
            Err(Error::Remote(RemoteError::Unreachable { .. }))
        ) {
            let mut idle = self.idle.lock().unwrap();
            if idle.len() < 16 {
                idle.push(con);
            }
        }
        outcome
    }

    async fn attempt(
        &self,
        job: Job,
        call: &Call,
        con: &mut MultiplexedConnection,
        started: Instant,
    ) -> Result<Served, Error> {
        let tier = job.tier.clone();
        if !self.has_worker(&tier) {
            self.wait_for_worker(con, &tier).await?;
        }
        let entry: String = con
            .xadd_maxlen(
                jobs_key(&tier),
                StreamMaxlen::Approx(self.settings.stream_maxlen),
                "*",
                &job.fields(),
            )
            .await
            .map_err(|e| self.unreachable(&tier, e))?;
        let mut watch = Watch {
            front: self,
            job: &job,
            entry,
            last: "0-0".into(),
            progress: None,
            cancelled_at: None,
        };
        let deadline = started + Duration::from_secs(self.settings.request_timeout_secs);
        let mut checked = Instant::now();
        loop {
            if Instant::now() > deadline {
                let _: redis::RedisResult<()> =
                    con.set_ex(cancel_key(&job.attempt), 1, self.ttl()).await;
                return Err(RemoteError::Timeout {
                    tier,
                    secs: self.settings.request_timeout_secs,
                }
                .into());
            }
            if call.cancel.is_cancelled() && watch.cancelled_at.is_none() {
                watch.cancelled_at = Some(Instant::now());
                let _: redis::RedisResult<()> =
                    con.set_ex(cancel_key(&job.attempt), 1, self.ttl()).await;
            }
            if let Some(at) = watch.cancelled_at {
                if at.elapsed() > CANCEL_CONFIRM {
                    return Err(Error::Cancelled {
                        stage: Some(format!("at tier {tier} (the worker did not confirm)")),
                    });
                }
            }
            let opts = StreamReadOptions::default()
                .block(super::conn::BLOCK_MS)
                .count(100);
            let keys = [events_key(&job.attempt)];
            let ids = [watch.last.clone()];
            let read = tokio::select! {
                r = con.xread_options::<_, _, Option<StreamReadReply>>(&keys, &ids, &opts) => r,
                _ = call.cancel.cancelled(), if watch.cancelled_at.is_none() => continue,
            };
            let step = match read {
                // Now and then, make sure the job still exists somewhere.
                Ok(None) if checked.elapsed() >= LOST_CHECK => {
                    checked = Instant::now();
                    watch.check_not_lost(con).await
                }
                Ok(reply) => watch.events(reply, call, con).await,
                Err(e) if is_connection_error(&e) => {
                    *con = watch.reconnect(e).await?;
                    watch.check_not_lost(con).await
                }
                Err(e) => Err(self.unreachable(&tier, e)),
            };
            if let Some(served) = step? {
                return Ok(served);
            }
        }
    }

    /// A worker may be starting, or re-advertising after a Redis restart:
    /// look again for up to three heartbeat intervals before giving up.
    async fn wait_for_worker(
        &self,
        con: &mut MultiplexedConnection,
        tier: &str,
    ) -> Result<(), Error> {
        let give_up = Instant::now() + Duration::from_secs(3 * self.settings.heartbeat_secs);
        loop {
            let workers = read_workers(con)
                .await
                .map_err(|e| self.unreachable(tier, e))?;
            let serves = workers.iter().any(|w| w.tiers.iter().any(|t| t == tier));
            self.health.lock().unwrap().workers = workers;
            if serves {
                return Ok(());
            }
            if Instant::now() >= give_up {
                return Err(RemoteError::NoWorker {
                    tier: tier.into(),
                    url: self.redis.shown.clone(),
                }
                .into());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn ttl(&self) -> u64 {
        self.settings.result_ttl_secs
    }

    fn has_worker(&self, tier: &str) -> bool {
        let now = unix_ms();
        self.health.lock().unwrap().workers.iter().any(|w| {
            w.tiers.iter().any(|t| t == tier)
                && now.saturating_sub(w.heartbeat_unix_ms) <= 3000 * w.heartbeat_secs.max(1)
        })
    }
}

/// One attempt being watched.
struct Watch<'a> {
    front: &'a RemoteTiers,
    job: &'a Job,
    /// The job's stream entry id.
    entry: String,
    /// The last event read.
    last: String,
    progress: Option<Progress>,
    cancelled_at: Option<Instant>,
}

impl Watch<'_> {
    /// Applies new events; `Some` once the result is in.
    async fn events(
        &mut self,
        reply: Option<StreamReadReply>,
        call: &Call,
        con: &mut MultiplexedConnection,
    ) -> Result<Option<Served>, Error> {
        let tier = &self.job.tier;
        let entries = reply
            .into_iter()
            .flat_map(|r| r.keys)
            .flat_map(|k| k.ids)
            .collect::<Vec<_>>();
        let mut done = entries.is_empty(); // on a quiet read, look for a result anyway
        for e in entries {
            self.last = e.id.clone();
            let fields: HashMap<String, String> = e
                .map
                .keys()
                .filter_map(|k| e.get::<String>(k).map(|v| (k.clone(), v)))
                .collect();
            match Event::parse(&fields) {
                Some(Event::Claimed { worker }) => call.activity.claimed(tier, &worker),
                Some(Event::Loading { worker }) => call.activity.loading(tier, Some(&worker)),
                Some(Event::Generating { worker, max_tokens }) => {
                    self.progress = Some(call.activity.generating(tier, max_tokens, Some(&worker)));
                }
                Some(Event::Tokens { n, .. }) => {
                    if let Some(p) = &self.progress {
                        p.set(n);
                    }
                }
                Some(Event::Done { .. }) => done = true,
                None => tracing::debug!(?fields, "ignoring an unknown event"),
            }
        }
        if !done {
            return Ok(None);
        }
        let stored: Option<String> = con
            .get(result_key(&self.job.attempt))
            .await
            .map_err(|e| self.front.unreachable(tier, e))?;
        stored.map(|s| self.answer(&s)).transpose()
    }

    fn answer(&self, stored: &str) -> Result<Served, Error> {
        let tier = self.job.tier.clone();
        let r: JobResult = serde_json::from_str(stored).map_err(|e| RemoteError::BadResult {
            tier: tier.clone(),
            reason: e.to_string(),
        })?;
        match r.outcome {
            JobOutcome::Answered { generation } => Ok(Served {
                generation: *generation,
                worker: r.worker,
                load_ms: r.load_ms,
                wait_ms: r.wait_ms,
            }),
            JobOutcome::PromptTooLong { tokens, context } => {
                Err(EngineError::PromptTooLong { tokens, context }.into())
            }
            JobOutcome::Cancelled => Err(Error::Cancelled {
                stage: Some(format!("at tier {tier} before it started")),
            }),
            JobOutcome::Failed { message } => Err(RemoteError::Failed {
                tier,
                worker: r.worker,
                message,
            }
            .into()),
        }
    }

    /// Reconnects with backoff for up to `redis.outage_secs`.
    async fn reconnect(&self, first: redis::RedisError) -> Result<MultiplexedConnection, Error> {
        let tier = &self.job.tier;
        tracing::warn!(%tier, error = %first, "lost Redis; reconnecting");
        let give_up = Instant::now() + Duration::from_secs(self.front.settings.outage_secs);
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut last = first.to_string();
        while Instant::now() < give_up {
            tokio::time::sleep(backoff.delay()).await;
            match self.front.redis.connect().await {
                Ok(c) => return Ok(c),
                Err(e) => last = e.to_string(),
            }
        }
        Err(self.front.unreachable(tier, last))
    }

    /// After a reconnection: the job must still be somewhere (answered,
    /// in its stream, or reporting); if Redis forgot it, say so.
    async fn check_not_lost(
        &self,
        con: &mut MultiplexedConnection,
    ) -> Result<Option<Served>, Error> {
        let tier = &self.job.tier;
        let unreachable = |e| self.front.unreachable(tier, e);
        let result_key = result_key(&self.job.attempt);
        let stored: Option<String> = con.get(&result_key).await.map_err(unreachable)?;
        if let Some(s) = stored {
            return self.answer(&s).map(Some);
        }
        let entry: StreamRangeReply = con
            .xrange(jobs_key(tier), &self.entry, &self.entry)
            .await
            .map_err(unreachable)?;
        let reporting: bool = con
            .exists(events_key(&self.job.attempt))
            .await
            .map_err(unreachable)?;
        if entry.ids.is_empty() && !reporting {
            return Err(RemoteError::Lost {
                tier: tier.clone(),
                url: self.front.redis.shown.clone(),
            }
            .into());
        }
        Ok(None)
    }
}

/// Every worker heartbeat present.
pub(crate) async fn read_workers(
    con: &mut MultiplexedConnection,
) -> redis::RedisResult<Vec<WorkerInfo>> {
    let mut keys: Vec<String> = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(WORKER_PATTERN)
            .arg("COUNT")
            .arg(100)
            .query_async(con)
            .await?;
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let values: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(con).await?;
    let mut workers: Vec<WorkerInfo> = values
        .into_iter()
        .flatten()
        .filter_map(|v| serde_json::from_str(&v).ok())
        .collect();
    workers.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(workers)
}

/// Checks Redis and reads the workers every heartbeat; backs off while
/// Redis is down.
async fn monitor(redis: Redis, settings: RedisSettings, health: Arc<Mutex<Health>>) {
    let every = Duration::from_secs(settings.heartbeat_secs);
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
    let mut con: Option<MultiplexedConnection> = None;
    loop {
        if con.is_none() {
            con = redis.connect().await.ok();
        }
        let seen = match con.as_mut() {
            Some(c) => read_workers(c).await.map_err(|e| e.to_string()),
            None => Err("cannot connect".to_string()),
        };
        let wait = {
            let mut h = health.lock().unwrap();
            match seen {
                Ok(workers) => {
                    if !h.reachable {
                        tracing::info!(url = %redis.shown, workers = workers.len(), "Redis reachable");
                    }
                    *h = Health {
                        reachable: true,
                        error: None,
                        workers,
                    };
                    backoff.reset();
                    every
                }
                Err(e) => {
                    if h.reachable || h.error.is_none() {
                        tracing::warn!(url = %redis.shown, error = %e, "Redis unreachable; retrying with backoff");
                    }
                    con = None;
                    h.reachable = false;
                    h.error = Some(e);
                    backoff.delay()
                }
            }
        };
        tokio::time::sleep(wait).await;
    }
}
