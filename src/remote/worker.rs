//! The worker: takes jobs for its tiers from their streams (consumer group
//! `workers`), runs each through its local [`TierPool`] (up to
//! `max_batch` at once, which the engine decodes together), streams
//! progress back, stores the result once and only then acknowledges the
//! entry.
//! Entries left pending by a worker that died or hung are taken over after
//! `redis.claim_idle_ms`; a job being worked on is renewed well before that.
//! Malformed entries go to the dead-letter stream, acknowledged.

use super::conn::{is_connection_error, Backoff, Redis};
use super::wire::{
    cancel_key, events_key, jobs_key, parse_job, result_key, unix_ms, worker_key, Event, Job,
    JobOutcome, JobResult, WorkerInfo, DEAD_LETTER, DEAD_LETTER_MAXLEN, GROUP,
};
use crate::config::RedisSettings;
use crate::engine::{Cancel, Engine, EngineError, GenerateRequest, Progress};
use crate::pool::TierPool;
use redis::aio::MultiplexedConnection;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamMaxlen, StreamPendingCountReply,
    StreamReadOptions, StreamReadReply,
};
use redis::AsyncCommands;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How often a running job checks for cancellation and reports tokens.
const TICK: Duration = Duration::from_millis(100);

/// Who this worker is and what it serves.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub id: String,
    /// Tier indices it takes jobs for.
    pub tiers: Vec<usize>,
    pub settings: RedisSettings,
    /// Jobs it works on at once (`worker --max-batch`, else the config's
    /// `server.max_batch`); at least 1.
    pub max_batch: usize,
}

/// A default worker id: host name and process id.
pub fn default_id() -> String {
    let host = sysinfo::System::host_name().unwrap_or_else(|_| "worker".into());
    format!("{host}-{}", std::process::id())
}

#[derive(Debug, Default)]
struct Shared {
    /// The tier of each job in hand.
    busy: Vec<String>,
    jobs_done: u64,
}

/// A running worker.
pub struct Worker<E: Engine> {
    pool: TierPool<E>,
    redis: Redis,
    opts: WorkerOptions,
    names: Vec<String>,
    shared: Arc<Mutex<Shared>>,
    started_unix_ms: u64,
}

impl<E: Engine> Worker<E> {
    pub fn new(pool: TierPool<E>, redis: Redis, opts: WorkerOptions) -> Self {
        let names = opts
            .tiers
            .iter()
            .map(|&i| pool.config().tiers[i].name.clone())
            .collect();
        Worker {
            pool,
            redis,
            opts,
            names,
            shared: Arc::default(),
            started_unix_ms: unix_ms(),
        }
    }

    /// Serves until `shutdown`; the jobs in hand are finished first. Never
    /// gives up on Redis: reconnects with backoff.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let heartbeat = {
            let me = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move { me.heartbeat_loop(shutdown).await })
        };
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        while !shutdown.is_cancelled() {
            match self.session(&shutdown).await {
                Ok(()) => break,
                Err(e) => {
                    let wait = backoff.delay();
                    tracing::warn!(url = %self.redis.shown, error = %e, retry_in_ms = wait.as_millis() as u64, "Redis connection lost; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.cancelled() => break,
                    }
                }
            }
        }
        heartbeat.abort();
        if let Ok(mut con) = self.redis.connect().await {
            let _: redis::RedisResult<()> = con.del(worker_key(&self.opts.id)).await;
        }
        tracing::info!(id = %self.opts.id, "worker stopped");
    }

    /// One connection's lifetime: reads and reclaims jobs until shutdown
    /// (`Ok`) or a connection error (`Err`); the jobs in hand are finished
    /// either way.
    async fn session(self: &Arc<Self>, shutdown: &CancellationToken) -> redis::RedisResult<()> {
        let mut jobs = JoinSet::new();
        let ended = self.serve_jobs(&mut jobs, shutdown).await;
        while let Some(done) = jobs.join_next().await {
            if let Ok(Err(e)) = done {
                tracing::warn!(error = %e, "a job in hand lost Redis; it will be reclaimed");
            }
        }
        ended
    }

    /// Starts `entry` of tier `which` on a task of its own.
    fn start(
        self: &Arc<Self>,
        jobs: &mut JoinSet<redis::RedisResult<()>>,
        con: &MultiplexedConnection,
        which: usize,
        entry: StreamId,
    ) {
        let me = self.clone();
        let mut con = con.clone();
        jobs.spawn(async move { me.handle(&mut con, which, entry).await });
    }

    /// [`Worker::session`]'s loop: keeps up to `max_batch` jobs in hand.
    async fn serve_jobs(
        self: &Arc<Self>,
        jobs: &mut JoinSet<redis::RedisResult<()>>,
        shutdown: &CancellationToken,
    ) -> redis::RedisResult<()> {
        let max = self.opts.max_batch.max(1);
        let mut con = self.redis.connect().await?;
        // Blocking reads get their own connection: they would hold up every
        // other command on a shared one.
        let mut reader = self.redis.connect().await?;
        self.ensure_groups(&mut con).await?;
        tracing::info!(id = %self.opts.id, tiers = ?self.names, url = %self.redis.shown, "worker connected");
        let keys: Vec<String> = self.names.iter().map(|n| jobs_key(n)).collect();
        let claim_every = Duration::from_millis(self.opts.settings.claim_idle_ms / 2);
        let block = (self.opts.settings.claim_idle_ms as usize / 2).clamp(50, 1000);
        let mut next_claim = Instant::now();
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            while let Some(done) = jobs.try_join_next() {
                finished(done)?;
            }
            if jobs.len() >= max {
                tokio::select! {
                    Some(done) = jobs.join_next() => finished(done)?,
                    _ = shutdown.cancelled() => return Ok(()),
                }
                continue;
            }
            if Instant::now() >= next_claim {
                for (i, key) in keys.iter().enumerate() {
                    if jobs.len() >= max {
                        break;
                    }
                    for entry in self.reclaim(&mut con, key).await? {
                        let times = deliveries(&mut con, key, &entry.id).await?;
                        if times > self.opts.settings.max_deliveries {
                            self.give_up(&mut con, i, entry, times).await?;
                            continue;
                        }
                        tracing::warn!(stream = %key, entry = %entry.id, times, "took over a job left by a stopped worker");
                        self.start(jobs, &con, i, entry);
                    }
                }
                next_claim = Instant::now() + claim_every;
            }
            let opts = StreamReadOptions::default()
                .group(GROUP, &self.opts.id)
                .count(max.saturating_sub(jobs.len()).max(1))
                .block(block);
            let ids = vec![">"; keys.len()];
            let read = tokio::select! {
                r = reader.xread_options::<_, _, Option<StreamReadReply>>(&keys, &ids, &opts) => r,
                _ = shutdown.cancelled() => return Ok(()),
            };
            let reply = match read {
                Ok(r) => r,
                Err(e) if e.code() == Some("NOGROUP") => {
                    tracing::warn!("consumer group gone (Redis restarted?); creating it again");
                    self.ensure_groups(&mut con).await?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            for k in reply.into_iter().flat_map(|r| r.keys) {
                let Some(i) = keys.iter().position(|key| *key == k.key) else {
                    continue;
                };
                for entry in k.ids {
                    self.start(jobs, &con, i, entry);
                }
            }
        }
    }

    async fn ensure_groups(&self, con: &mut MultiplexedConnection) -> redis::RedisResult<()> {
        for n in &self.names {
            let made: redis::RedisResult<()> =
                con.xgroup_create_mkstream(jobs_key(n), GROUP, "0").await;
            match made {
                Ok(()) => {}
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Entries of `key` idle longer than `claim_idle_ms`, now ours.
    async fn reclaim(
        &self,
        con: &mut MultiplexedConnection,
        key: &str,
    ) -> redis::RedisResult<Vec<StreamId>> {
        let reply: redis::RedisResult<StreamAutoClaimReply> = con
            .xautoclaim_options(
                key,
                GROUP,
                &self.opts.id,
                self.opts.settings.claim_idle_ms,
                "0-0",
                StreamAutoClaimOptions::default().count(1),
            )
            .await;
        match reply {
            Ok(r) => Ok(r.claimed),
            Err(e) if e.code() == Some("NOGROUP") => {
                self.ensure_groups(con).await?;
                Ok(Vec::new())
            }
            Err(e) => Err(e),
        }
    }

    /// One stream entry of tier `which` (index into `opts.tiers`).
    async fn handle(
        &self,
        con: &mut MultiplexedConnection,
        which: usize,
        entry: StreamId,
    ) -> redis::RedisResult<()> {
        let tier_name = &self.names[which];
        let key = jobs_key(tier_name);
        let raw: Option<Vec<u8>> = entry.get("job");
        let job = match parse_job(raw.as_deref(), tier_name) {
            Ok(job) => job,
            Err(reason) => {
                tracing::warn!(stream = %key, entry = %entry.id, %reason, "malformed job moved to {DEAD_LETTER}");
                return self.dead_letter(con, &key, &entry, reason).await;
            }
        };
        let (answered, cancelled): (bool, bool) = redis::pipe()
            .exists(result_key(&job.attempt))
            .exists(cancel_key(&job.attempt))
            .query_async(con)
            .await?;
        if answered {
            tracing::info!(attempt = %job.attempt, "already answered (a reclaimed duplicate); acknowledging");
            let _: u64 = con.xack(&key, GROUP, &[&entry.id]).await?;
            return Ok(());
        }
        let wait_ms = unix_ms().saturating_sub(job.enqueued_unix_ms) as f64;
        self.event(
            con,
            &job,
            Event::Claimed {
                worker: self.opts.id.clone(),
            },
        )
        .await?;
        let (outcome, load_ms) = if cancelled {
            (JobOutcome::Cancelled, 0.0)
        } else {
            self.shared.lock().unwrap().busy.push(tier_name.clone());
            let r = self
                .generate(con, self.opts.tiers[which], &job, &key, &entry.id)
                .await;
            let mut shared = self.shared.lock().unwrap();
            if let Some(at) = shared.busy.iter().position(|t| t == tier_name) {
                shared.busy.remove(at);
            }
            drop(shared);
            r
        };
        let result = JobResult {
            worker: self.opts.id.clone(),
            wait_ms,
            load_ms,
            outcome,
        };
        self.store(con, &job, &result).await?;
        // Acknowledged before `Done`, so a front end that hears `Done` finds
        // nothing pending. Should this worker die in between, the front
        // end's quiet check finds the stored result.
        let _: u64 = con.xack(&key, GROUP, &[&entry.id]).await?;
        self.event(
            con,
            &job,
            Event::Done {
                worker: self.opts.id.clone(),
            },
        )
        .await?;
        self.shared.lock().unwrap().jobs_done += 1;
        Ok(())
    }

    /// Moves `entry` of `key` to the dead-letter stream with `reason`, and
    /// acknowledges it: it is never retried.
    async fn dead_letter(
        &self,
        con: &mut MultiplexedConnection,
        key: &str,
        entry: &StreamId,
        reason: String,
    ) -> redis::RedisResult<()> {
        let fields: Vec<(String, String)> = entry
            .map
            .keys()
            .map(|k| (k.clone(), entry.get::<String>(k).unwrap_or_default()))
            .collect();
        let _: String = con
            .xadd_maxlen(
                DEAD_LETTER,
                StreamMaxlen::Approx(DEAD_LETTER_MAXLEN),
                "*",
                &[
                    ("stream", key.to_string()),
                    ("entry", entry.id.clone()),
                    ("reason", reason),
                    ("worker", self.opts.id.clone()),
                    ("fields", serde_json::to_string(&fields).unwrap_or_default()),
                ],
            )
            .await?;
        let _: u64 = con.xack(key, GROUP, &[&entry.id]).await?;
        Ok(())
    }

    /// A job whose workers kept stopping on it: the front end gets a
    /// failure (if it can be told) and the entry goes to the dead letters.
    async fn give_up(
        &self,
        con: &mut MultiplexedConnection,
        which: usize,
        entry: StreamId,
        times: usize,
    ) -> redis::RedisResult<()> {
        let key = jobs_key(&self.names[which]);
        let reason = format!(
            "delivered {times} times without an answer (redis.max_deliveries is {}): the workers that took it stopped",
            self.opts.settings.max_deliveries
        );
        tracing::error!(stream = %key, entry = %entry.id, %reason, "giving up on a job");
        let raw: Option<Vec<u8>> = entry.get("job");
        if let Ok(job) = parse_job(raw.as_deref(), &self.names[which]) {
            let result = JobResult {
                worker: self.opts.id.clone(),
                wait_ms: 0.0,
                load_ms: 0.0,
                outcome: JobOutcome::Failed {
                    message: reason.clone(),
                },
            };
            self.store(con, &job, &result).await?;
            let done = Event::Done {
                worker: self.opts.id.clone(),
            };
            self.event(con, &job, done).await?;
        }
        self.dead_letter(con, &key, &entry, reason).await
    }

    /// Runs the job on the local pool while a side task renews the entry,
    /// watches for cancellation and reports tokens.
    async fn generate(
        &self,
        con: &MultiplexedConnection,
        tier: usize,
        job: &Job,
        key: &str,
        entry: &str,
    ) -> (JobOutcome, f64) {
        let cancel = Cancel::default();
        let progress = Progress::default();
        let watcher = tokio::spawn(watch(
            con.clone(),
            Watched {
                worker: self.opts.id.clone(),
                job: job.clone(),
                key: key.to_string(),
                entry: entry.to_string(),
                renew_every: Duration::from_millis(self.opts.settings.claim_idle_ms / 3),
                ttl: self.opts.settings.result_ttl_secs,
            },
            cancel.clone(),
            progress.clone(),
        ));
        let mut con = con.clone();
        let worker = self.opts.id.clone();
        let _ = self
            .event(
                &mut con,
                job,
                Event::Loading {
                    worker: worker.clone(),
                },
            )
            .await;
        let r = match self.pool.ready(tier).await {
            Err(e) => (
                JobOutcome::Failed {
                    message: e.to_string(),
                },
                0.0,
            ),
            Ok(ready) => {
                let load_ms = ready.load_ms();
                let _ = self
                    .event(
                        &mut con,
                        job,
                        Event::Generating {
                            worker,
                            max_tokens: job.max_tokens,
                        },
                    )
                    .await;
                let verify = job.handoff.as_ref().filter(|h| h.verify);
                let request = GenerateRequest {
                    sampling: job.sampling,
                    verify: verify.map(|h| h.draft.clone()),
                    cancel,
                    progress,
                    ..GenerateRequest::new(job.messages.clone(), job.max_tokens)
                };
                let outcome = match ready.run(request).await {
                    Ok(served) => JobOutcome::Answered {
                        generation: Box::new(served.generation),
                    },
                    Err(EngineError::PromptTooLong { tokens, context }) => {
                        JobOutcome::PromptTooLong { tokens, context }
                    }
                    Err(e) => JobOutcome::Failed {
                        message: e.to_string(),
                    },
                };
                (outcome, load_ms)
            }
        };
        watcher.abort();
        r
    }

    /// Stores the result once (`SET NX`), retrying across a Redis outage
    /// for up to `redis.outage_secs`.
    async fn store(
        &self,
        con: &mut MultiplexedConnection,
        job: &Job,
        result: &JobResult,
    ) -> redis::RedisResult<()> {
        let json = serde_json::to_string(result).expect("a result serializes");
        let key = result_key(&job.attempt);
        let give_up = Instant::now() + Duration::from_secs(self.opts.settings.outage_secs);
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        loop {
            let set: redis::RedisResult<Option<String>> = redis::cmd("SET")
                .arg(&key)
                .arg(&json)
                .arg("NX")
                .arg("EX")
                .arg(self.opts.settings.result_ttl_secs)
                .query_async(con)
                .await;
            match set {
                Ok(Some(_)) => return Ok(()),
                Ok(None) => {
                    tracing::info!(attempt = %job.attempt, "another worker stored this result first; keeping theirs");
                    return Ok(());
                }
                Err(e) if is_connection_error(&e) && Instant::now() < give_up => {
                    tracing::warn!(attempt = %job.attempt, error = %e, "cannot store the result yet; retrying");
                    tokio::time::sleep(backoff.delay()).await;
                    if let Ok(c) = self.redis.connect().await {
                        *con = c;
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn event(
        &self,
        con: &mut MultiplexedConnection,
        job: &Job,
        e: Event,
    ) -> redis::RedisResult<()> {
        publish(con, job, &e, self.opts.settings.result_ttl_secs).await
    }

    async fn heartbeat_loop(&self, shutdown: CancellationToken) {
        let every = Duration::from_secs(self.opts.settings.heartbeat_secs);
        let mut con: Option<MultiplexedConnection> = None;
        while !shutdown.is_cancelled() {
            if con.is_none() {
                con = self.redis.connect().await.ok();
            }
            if let Some(c) = con.as_mut() {
                let info = serde_json::to_string(&self.info()).expect("info serializes");
                let set: redis::RedisResult<()> = c
                    .set_ex(
                        worker_key(&self.opts.id),
                        info,
                        3 * self.opts.settings.heartbeat_secs,
                    )
                    .await;
                if set.is_err() {
                    con = None;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.cancelled() => {}
            }
        }
    }

    fn info(&self) -> WorkerInfo {
        let status = self.pool.status();
        let shared = self.shared.lock().unwrap();
        WorkerInfo {
            id: self.opts.id.clone(),
            host: sysinfo::System::host_name().unwrap_or_default(),
            pid: std::process::id(),
            tiers: self.names.clone(),
            resident: status.resident.iter().map(|r| r.tier.clone()).collect(),
            estimated_bytes: status.estimated_bytes,
            process_rss: status.process_rss,
            busy: shared.busy.first().cloned(),
            jobs_in_hand: shared.busy.len(),
            max_batch: self.opts.max_batch,
            jobs_done: shared.jobs_done,
            started_unix_ms: self.started_unix_ms,
            heartbeat_unix_ms: unix_ms(),
            heartbeat_secs: self.opts.settings.heartbeat_secs,
        }
    }
}

/// How many times `id` of `key` has been delivered (0 if not pending).
/// A finished job task's outcome: its Redis error ends the session (a
/// panic is logged; the job will be reclaimed).
fn finished(
    done: Result<redis::RedisResult<()>, tokio::task::JoinError>,
) -> redis::RedisResult<()> {
    match done {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "a job task failed; its job will be reclaimed");
            Ok(())
        }
    }
}

async fn deliveries(
    con: &mut MultiplexedConnection,
    key: &str,
    id: &str,
) -> redis::RedisResult<usize> {
    let reply: StreamPendingCountReply = con.xpending_count(key, GROUP, id, id, 1).await?;
    Ok(reply.ids.first().map_or(0, |p| p.times_delivered))
}

async fn publish(
    con: &mut MultiplexedConnection,
    job: &Job,
    e: &Event,
    ttl: u64,
) -> redis::RedisResult<()> {
    let key = events_key(&job.attempt);
    redis::pipe()
        .xadd_maxlen(&key, StreamMaxlen::Approx(1000), "*", &e.fields())
        .ignore()
        .expire(&key, ttl as i64)
        .ignore()
        .query_async(con)
        .await
}

/// What the side task of a running job needs.
struct Watched {
    worker: String,
    job: Job,
    key: String,
    entry: String,
    renew_every: Duration,
    ttl: u64,
}

/// Every tick: cancellation from the front end, tokens to it; every
/// `renew_every`: reset the entry's idle time so no other worker takes it.
async fn watch(mut con: MultiplexedConnection, w: Watched, cancel: Cancel, progress: Progress) {
    let mut reported = 0u32;
    let mut renewed = Instant::now();
    let cancel_key = cancel_key(&w.job.attempt);
    loop {
        tokio::time::sleep(TICK).await;
        if !cancel.is_cancelled() {
            let asked: redis::RedisResult<bool> = con.exists(&cancel_key).await;
            if matches!(asked, Ok(true)) {
                tracing::info!(attempt = %w.job.attempt, "cancelled by the front end");
                cancel.cancel();
            }
        }
        let n = progress.tokens();
        if n != reported {
            let e = Event::Tokens {
                worker: w.worker.clone(),
                n,
            };
            if publish(&mut con, &w.job, &e, w.ttl).await.is_ok() {
                reported = n;
            }
        }
        if renewed.elapsed() >= w.renew_every {
            let renew: redis::RedisResult<redis::Value> = redis::cmd("XCLAIM")
                .arg(&w.key)
                .arg(GROUP)
                .arg(&w.worker)
                .arg(0)
                .arg(&w.entry)
                .arg("JUSTID")
                .query_async(&mut con)
                .await;
            if let Err(e) = renew {
                tracing::debug!(error = %e, "could not renew the job's claim");
            }
            renewed = Instant::now();
        }
    }
}
