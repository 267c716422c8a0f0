//! The routing service behind the MCP tools: check the arguments, classify,
//! pick the start tier, run the confidence cascade over the ladder's tiers,
//! remember recent requests for force_escalate, and keep per-tier
//! statistics for get_tier_status.
//!
//! - [`validate`]: a caller's request, checked into a [`ValidRequest`].
//! - [`run`]: the cascade loop over a [`run::Plan`].
//! - [`tiers`]: the one seam in front of local and remote tiers.
//! - [`queue`]: up to `server.max_batch` local requests per resident tier, resident tiers first.
//! - [`stats`]: per-tier bookkeeping.
//! - [`report`]: the result and status types the tools return.

pub mod queue;
pub mod report;
mod run;
mod stats;
mod tiers;
pub mod validate;

pub use report::{Attempt, RouteResult, TierStatus, TierStatusReport, Timings, TokenCounts};
pub use validate::{check_generation_args, RouteRequest, ValidRequest};

use crate::activity::Call;
use crate::cascade::{self, Draft, RoutedBy};
use crate::classify::assist::Assist;
use crate::classify::learning::Classifier;
use crate::classify::store::{Correction, Source};
use crate::classify::Complexity;
use crate::config::Config;
use crate::engine::{Engine, LoadSpec};
use crate::error::Result;
use crate::memory::MemoryView;
use crate::metrics::{Live, LiveTier, Metrics};
use crate::pool::TierPool;
use crate::remote::{RemoteStatus, RemoteTiers};
use queue::Scheduler;
use run::Plan;
use stats::{Spent, TierStats};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Errors a caller can act on that are not argument errors.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error(
        "unknown or expired request_id {id:?}: the last {kept} requests are kept (routing.history)"
    )]
    UnknownRequest { id: String, kept: usize },
    #[error("request {id} was answered by {tier:?}, the top tier: there is no tier above it to escalate to")]
    PastTopTier { id: String, tier: String },
    #[error("target_tier {target:?} is not above {tier:?}, which answered request {id}: force_escalate only goes up")]
    NotHigher {
        id: String,
        tier: String,
        target: String,
    },
}

/// A finished request, kept for force_escalate.
#[derive(Debug, Clone)]
struct Record {
    id: String,
    request: ValidRequest,
    tier: usize,
    answer: String,
    confidence: f64,
    complexity: Complexity,
}

#[derive(Debug, Default)]
struct State {
    history: VecDeque<Record>,
    stats: Vec<TierStats>,
    counter: u64,
}

/// The routing service; cheap to share behind an `Arc`.
pub struct Router<E: Engine> {
    pool: TierPool<E>,
    config: Arc<Config>,
    queue: Scheduler,
    metrics: Metrics,
    /// Tiers served through Redis, when `serve --redis` is on.
    remote: Option<RemoteTiers>,
    /// The learned classifier and its corrections.
    classifier: Arc<Classifier>,
    /// The model-assisted domain, for queries the classifier is unsure of.
    assist: Arc<Assist>,
    /// A std mutex: short bookkeeping only, never held across `.await`.
    state: Mutex<State>,
}

impl<E: Engine> Router<E> {
    pub fn new(engine: E, config: Arc<Config>) -> Self {
        let stats = vec![TierStats::default(); config.tiers.len()];
        let assist = start_assist(&engine, &config);
        Router {
            assist,
            pool: TierPool::new(engine, config.clone()),
            queue: Scheduler::new(
                config.server.queue_depth,
                config.server.max_bypass,
                config.server.max_batch as usize,
            ),
            metrics: Metrics::default(),
            remote: None,
            classifier: Arc::new(Classifier::open(&config.routing.learning)),
            config,
            state: Mutex::new(State {
                stats,
                ..State::default()
            }),
        }
    }

    /// Serves the config's remote tiers through `remote`.
    pub fn with_remote(mut self, remote: RemoteTiers) -> Self {
        self.remote = Some(remote);
        self
    }

    /// How long a shutdown drain lets answers already made reach their
    /// transport after [`Router::wait_idle`]: a request leaves the queue as
    /// its answer is made, a moment before the answer is written.
    pub const ANSWER_FLUSH: std::time::Duration = std::time::Duration::from_millis(300);

    /// Waits up to `within` until no request runs or waits, locally or on
    /// a remote worker; false when time ran out.
    pub async fn wait_idle(&self, within: std::time::Duration) -> bool {
        let deadline = Instant::now() + within;
        if !self.queue.wait_idle(within).await {
            return false;
        }
        while self.remote.as_ref().is_some_and(|r| r.in_flight() > 0) {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        true
    }

    /// Redis and its workers, when remote tiers are on.
    pub fn remote_status(&self) -> Option<RemoteStatus> {
        self.remote.as_ref().map(RemoteTiers::status)
    }

    pub fn pool(&self) -> &TierPool<E> {
        &self.pool
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// The inference queue (for metrics).
    pub fn queue(&self) -> &Scheduler {
        &self.queue
    }

    /// Answers a query: classify, start at the chosen tier, escalate while
    /// confidence is below the tier's threshold.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for bad arguments (including a query longer
    /// than the tier's context); a pool or engine error when the first tier
    /// cannot load or answer.
    pub async fn route(&self, req: RouteRequest, call: &Call) -> Result<RouteResult> {
        let started = Instant::now();
        let result = self.route_inner(req, call, started).await;
        self.count(result, started)
    }

    async fn route_inner(
        &self,
        req: RouteRequest,
        call: &Call,
        started: Instant,
    ) -> Result<RouteResult> {
        let request = req.validate(&self.config)?;
        let t = Instant::now();
        if self.classifier.changed_elsewhere() {
            // Another server sharing the store recorded corrections.
            let classifier = self.classifier.clone();
            drop(tokio::task::spawn_blocking(move || classifier.reload()));
        }
        let mut complexity = self.classifier.classify(&request.query);
        if self.assist.would_refine(&complexity) {
            // Embedding takes a model pass: off the async runtime. Should
            // it fail, the default path's verdict stands.
            let (assist, query) = (self.assist.clone(), request.query.clone());
            let mut c = complexity.clone();
            let refined = tokio::task::spawn_blocking(move || {
                assist.refine(&query, &mut c);
                c
            });
            if let Ok(c) = refined.await {
                complexity = c;
            }
        }
        let classify_ms = t.elapsed().as_secs_f64() * 1e3;
        let (start, routed_by) = cascade::start_tier(&self.config, &complexity, request.preferred);
        if let Some(before) = complexity.corrected_from {
            let bank = Complexity {
                level: before,
                ..complexity.clone()
            };
            if cascade::start_tier(&self.config, &bank, request.preferred).0 != start {
                self.classifier.count_changed_route();
                self.metrics.route_changed();
            }
        }
        let fallback = match routed_by {
            RoutedBy::Domain => self
                .config
                .routing
                .domains
                .get(&complexity.domain)
                .and_then(|(_, f)| *f),
            _ => None,
        };
        let plan = Plan {
            request,
            complexity,
            start,
            fallback,
            routed_by,
            draft: None,
        };
        let mut result = self.run(plan, started, call).await?;
        result.timings.classify_ms = classify_ms;
        Ok(result)
    }

    /// Re-answers a recent request at the next tier up (or `target`), with
    /// the previous answer handed over as the draft.
    ///
    /// # Errors
    ///
    /// [`RouteError`] for an unknown or expired id, a request already at the
    /// top, or a target that is not higher; [`Error::InvalidInput`] for an
    /// unknown target name.
    pub async fn escalate(
        &self,
        id: &str,
        target: Option<&str>,
        call: &Call,
    ) -> Result<RouteResult> {
        let started = Instant::now();
        let result = self.escalate_inner(id, target, call, started).await;
        self.count(result, started)
    }

    /// Records a finished request in the metrics.
    fn count(&self, result: Result<RouteResult>, started: Instant) -> Result<RouteResult> {
        let (outcome, tier) = match &result {
            Ok(r) => ("answered", Some(r.tier.as_str())),
            Err(e) => (e.kind().label(), None),
        };
        self.metrics
            .request(outcome, tier, started.elapsed().as_secs_f64());
        result
    }

    async fn escalate_inner(
        &self,
        id: &str,
        target: Option<&str>,
        call: &Call,
        started: Instant,
    ) -> Result<RouteResult> {
        let record = {
            let st = self.state.lock().unwrap();
            st.history.iter().find(|r| r.id == id).cloned()
        }
        .ok_or_else(|| RouteError::UnknownRequest {
            id: id.to_string(),
            kept: self.config.routing.history,
        })?;
        let to = self.escalation_target(&record, target)?;
        // Learn while the next tier answers; done before the result returns,
        // so the caller's next query already starts where it was corrected.
        let learning = self.learn(
            &record.request.query,
            &record.complexity,
            to,
            Source::ForceEscalate,
        );
        let plan = Plan {
            draft: Some(Draft {
                tier: self.config.tiers[record.tier].name.clone(),
                answer: record.answer,
                confidence: record.confidence,
            }),
            request: record.request,
            complexity: record.complexity,
            start: to,
            fallback: None,
            routed_by: RoutedBy::ForceEscalate,
        };
        let result = self.run(plan, started, call).await;
        if let Some(learning) = learning {
            let _ = learning.await;
        }
        let mut result = result?;
        result.escalated_from = Some(record.id);
        Ok(result)
    }

    /// Records that `query` needed `tier` (a correction from `source`) and
    /// retrains the classifier, off the async runtime; None when learning
    /// is off or the source weighs 0.
    fn learn(
        &self,
        query: &str,
        complexity: &Complexity,
        tier: usize,
        source: Source,
    ) -> Option<tokio::task::JoinHandle<()>> {
        if !self.classifier.records(source) {
            return None;
        }
        let correction = Correction {
            query: query.to_string(),
            level: cascade::level_for_tier(&self.config.routing.levels, tier),
            domain: complexity.domain,
            source,
        };
        self.metrics.correction(source.as_str());
        let classifier = self.classifier.clone();
        Some(tokio::task::spawn_blocking(move || {
            classifier.learn(correction)
        }))
    }

    /// The tier force_escalate answers at: `target`, or the next one up.
    fn escalation_target(&self, record: &Record, target: Option<&str>) -> Result<usize> {
        let from = &self.config.tiers[record.tier];
        match target {
            Some(name) => {
                let i = validate::tier_argument(&self.config, "target_tier", name)?;
                if i <= record.tier {
                    return Err(RouteError::NotHigher {
                        id: record.id.clone(),
                        tier: from.name.clone(),
                        target: name.into(),
                    }
                    .into());
                }
                Ok(i)
            }
            None if record.tier + 1 >= self.config.tiers.len() => Err(RouteError::PastTopTier {
                id: record.id.clone(),
                tier: from.name.clone(),
            }
            .into()),
            None => Ok(record.tier + 1),
        }
    }

    /// Keeps `record` (under a new id, returned) for force_escalate, and
    /// counts the answer for its tier.
    fn remember(&self, mut record: Record) -> String {
        let mut st = self.state.lock().unwrap();
        st.counter += 1;
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        record.id = format!("req-{millis:x}-{}", st.counter);
        let id = record.id.clone();
        st.stats[record.tier].answers += 1;
        st.history.push_back(record);
        while st.history.len() > self.config.routing.history {
            st.history.pop_front();
        }
        id
    }

    /// Books one attempt on `tier` in the statistics and the metrics.
    fn stats(&self, tier: usize, spent: &Spent) {
        self.state.lock().unwrap().stats[tier].record(spent);
        self.metrics.attempt(&crate::metrics::AttemptRecord {
            tier: &self.config.tiers[tier].name,
            seconds: spent.latency_ms / 1e3,
            tokens: spent.tokens,
            generate_seconds: spent.generate_ms / 1e3,
            escalated: spent.escalated,
            prompt_tokens: spent.prompt_tokens,
            cached_tokens: spent.cached_tokens,
            batch_width: spent.batch_width,
            drafted: spent.speculative.map_or(0, |s| u64::from(s.drafted)),
            accepted: spent.speculative.map_or(0, |s| u64::from(s.accepted)),
        });
    }

    /// The Prometheus text exposition of this router's metrics.
    pub fn metrics_text(&self) -> String {
        let status = self.tier_status();
        let tiers = status
            .tiers
            .iter()
            .enumerate()
            .map(|(i, t)| LiveTier {
                name: t.name.clone(),
                loads: t.loads,
                evictions: t.evictions,
                loaded: t.loaded,
                estimated_bytes: self.config.tiers[i].cost.total,
                tokens_per_second: t.tokens_per_second,
                acceptance: t.speculative.as_ref().map(|s| s.acceptance_rate),
                running: t.running,
            })
            .collect();
        self.metrics.render(Live {
            tiers,
            resident_bytes: status.memory.estimated_in_use,
            process_rss: status.memory.process_rss,
            queue_waiting: self.queue.queued(),
            queue_running: self.queue.running_total(),
            queue_depth: self.queue.depth(),
            rejected: self.queue.rejected(),
            redis: status
                .remote
                .as_ref()
                .map(|r| (r.reachable, r.workers.iter().filter(|w| w.healthy).count())),
            kv_store: status.kv_store,
            probes: status.probes,
            learned_records: status.routing.learned_records,
        })
    }

    /// Every tier with its residency, costs and statistics, and the memory picture.
    pub fn tier_status(&self) -> TierStatusReport {
        let pool = self.pool.status();
        let remote = self.remote_status();
        let st = self.state.lock().unwrap();
        let tiers = self
            .config
            .tiers
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let resident = pool.resident.iter().find(|r| r.tier == t.name);
                let counters = &pool.counters[i].1;
                let s = &st.stats[i];
                TierStatus {
                    remote: t.remote,
                    workers: remote
                        .iter()
                        .flat_map(|r| &r.workers)
                        .filter(|w| w.healthy && w.info.tiers.contains(&t.name))
                        .map(|w| w.info.id.clone())
                        .collect(),
                    name: t.name.clone(),
                    role: t.role.as_str().into(),
                    model: t.model.display().to_string(),
                    threshold: t.threshold,
                    loaded: resident.is_some(),
                    in_use: resident.map_or(0, |r| r.in_use),
                    running: self.queue.running_on(i),
                    max_batch: t.sequences,
                    mean_batch_width: s.mean_batch_width(),
                    estimated_bytes: t.cost.total,
                    rss_after_load: (counters.rss_after_load > 0)
                        .then_some(counters.rss_after_load),
                    idle_ms: resident.map(|r| r.idle_ms),
                    loads: counters.loads,
                    evictions: counters.evictions,
                    attempts: s.attempts,
                    requests_served: s.answers,
                    escalations_out: s.escalations_out,
                    mean_latency_ms: s.mean_latency_ms(),
                    prompt_tokens: s.prompt_tokens,
                    cached_prompt_tokens: s.cached_tokens,
                    tokens_per_second: s.tokens_per_second(),
                    speculative: s.speculative(),
                }
            })
            .collect();
        TierStatusReport {
            tiers,
            remote,
            memory: MemoryView::of(&pool),
            kv_store: crate::engine::llama::store::counts(),
            probes: crate::probe::counts(),
            routing: self.classifier.status(),
            assist: self.assist.status(),
        }
    }
}

/// The model-assisted domain for `config`, started: the smallest tier's
/// model embeds, when `routing.assist` is on and the engine can embed;
/// otherwise an assist that is off and says why.
pub fn start_assist<E: Engine>(engine: &E, config: &Config) -> Arc<Assist> {
    if !config.routing.assist {
        return Assist::off("routing.assist is false");
    }
    let Some(t) = config.tiers.first() else {
        return Assist::off("no tiers");
    };
    let spec = LoadSpec::for_embeddings(t);
    match engine.embedder(spec) {
        Some(factory) => Assist::start(
            factory,
            crate::classify::learned::bank_examples().to_vec(),
            Some(crate::classify::assist::cache::default_dir()),
        ),
        None => Assist::off("this engine makes no embeddings"),
    }
}
