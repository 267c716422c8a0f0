//! Prometheus metrics (`GET /metrics`), with the prometheus-client crate.
//!
//! Counters and histograms are updated by the router as requests finish;
//! the pool and queue figures (loads, evictions, resident bytes, queue
//! depth) are read at scrape time from their owners, so they can never
//! drift from what get_tier_status shows.

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierLabel {
    pub tier: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

fn seconds_histogram() -> Histogram {
    // 10 ms .. ~82 s
    Histogram::new(exponential_buckets(0.01, 2.0, 14))
}

/// What the router records as requests run.
#[derive(Debug)]
pub struct Metrics {
    requests: Family<OutcomeLabel, Counter>,
    answers: Family<TierLabel, Counter>,
    attempts: Family<TierLabel, Counter>,
    escalations: Family<TierLabel, Counter>,
    request_seconds: Histogram,
    attempt_seconds: Family<TierLabel, Histogram, fn() -> Histogram>,
    tokens: Family<TierLabel, Counter>,
    prompt_tokens: Family<TierLabel, Counter>,
    cached_tokens: Family<TierLabel, Counter>,
    generate_seconds: Family<TierLabel, Counter<f64, AtomicU64>>,
    drafted: Family<TierLabel, Counter>,
    accepted: Family<TierLabel, Counter>,
    corrections: Family<SourceLabel, Counter>,
    routes_changed: Counter,
    batch_width: Family<TierLabel, Histogram, fn() -> Histogram>,
}

fn width_histogram() -> Histogram {
    Histogram::new([1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0, 64.0])
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Family::default(),
            answers: Family::default(),
            attempts: Family::default(),
            escalations: Family::default(),
            request_seconds: seconds_histogram(),
            attempt_seconds: Family::new_with_constructor(seconds_histogram),
            tokens: Family::default(),
            prompt_tokens: Family::default(),
            cached_tokens: Family::default(),
            generate_seconds: Family::default(),
            drafted: Family::default(),
            accepted: Family::default(),
            corrections: Family::default(),
            routes_changed: Counter::default(),
            batch_width: Family::new_with_constructor(width_histogram),
        }
    }
}

fn tier(name: &str) -> TierLabel {
    TierLabel { tier: name.into() }
}

/// One finished attempt, as the metrics see it.
pub struct AttemptRecord<'a> {
    pub tier: &'a str,
    pub seconds: f64,
    pub tokens: u32,
    pub generate_seconds: f64,
    pub escalated: bool,
    pub prompt_tokens: u32,
    pub cached_tokens: u32,
    pub drafted: u64,
    pub accepted: u64,
    /// Mean requests decoded together during the attempt (0: none generated).
    pub batch_width: f64,
}

impl Metrics {
    pub fn attempt(&self, a: &AttemptRecord) {
        let t = tier(a.tier);
        self.attempts.get_or_create(&t).inc();
        self.attempt_seconds.get_or_create(&t).observe(a.seconds);
        self.tokens.get_or_create(&t).inc_by(u64::from(a.tokens));
        self.prompt_tokens
            .get_or_create(&t)
            .inc_by(u64::from(a.prompt_tokens));
        self.cached_tokens
            .get_or_create(&t)
            .inc_by(u64::from(a.cached_tokens));
        self.generate_seconds
            .get_or_create(&t)
            .inc_by(a.generate_seconds);
        if a.escalated {
            self.escalations.get_or_create(&t).inc();
        }
        if a.batch_width > 0.0 {
            self.batch_width.get_or_create(&t).observe(a.batch_width);
        }
        if a.drafted > 0 {
            self.drafted.get_or_create(&t).inc_by(a.drafted);
            self.accepted.get_or_create(&t).inc_by(a.accepted);
        }
    }

    /// A request ended: `answered_by` is the tier of the answer, if any;
    /// `outcome` is answered, busy, cancelled, invalid or failed.
    pub fn request(&self, outcome: &str, answered_by: Option<&str>, seconds: f64) {
        self.requests
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .inc();
        if let Some(name) = answered_by {
            self.answers.get_or_create(&tier(name)).inc();
            self.request_seconds.observe(seconds);
        }
    }

    /// A routing correction was recorded (`source`: force_escalate or cascade).
    pub fn correction(&self, source: &str) {
        self.corrections
            .get_or_create(&SourceLabel {
                source: source.into(),
            })
            .inc();
    }

    /// A query started at another tier because of learned corrections.
    pub fn route_changed(&self) {
        self.routes_changed.inc();
    }

    /// The text exposition: these metrics plus the scrape-time `live` ones.
    pub fn render(&self, live: Live) -> String {
        let mut r = Registry::with_prefix("xnai");
        r.register(
            "requests",
            "Tool calls that route a query, by outcome (answered, busy, cancelled, invalid, failed)",
            self.requests.clone(),
        );
        r.register(
            "answers",
            "Requests whose final answer came from the tier",
            self.answers.clone(),
        );
        r.register(
            "attempts",
            "Generation attempts per tier",
            self.attempts.clone(),
        );
        r.register(
            "escalations",
            "Attempts at the tier that escalated to the next one",
            self.escalations.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Time from call to answer, queue wait included",
            self.request_seconds.clone(),
        );
        r.register(
            "attempt_duration_seconds",
            "Load + generation time of one attempt",
            self.attempt_seconds.clone(),
        );
        r.register(
            "generated_tokens",
            "Tokens generated per tier; rate(generated_tokens) / rate(generation_seconds) is tokens/s",
            self.tokens.clone(),
        );
        r.register(
            "prompt_tokens",
            "Prompt tokens of the tier's attempts",
            self.prompt_tokens.clone(),
        );
        r.register(
            "prompt_tokens_cached",
            "Prompt tokens reused from the tier's prompt cache or a saved KV state instead of computed",
            self.cached_tokens.clone(),
        );
        r.register(
            "generation_seconds",
            "Seconds spent generating per tier",
            self.generate_seconds.clone(),
        );
        r.register(
            "speculative_drafted_tokens",
            "Tokens proposed by the draft (model or n-gram)",
            self.drafted.clone(),
        );
        r.register(
            "speculative_accepted_tokens",
            "Drafted tokens the target accepted",
            self.accepted.clone(),
        );
        r.register(
            "routing_corrections",
            "Routing corrections recorded in the store, by source (force_escalate, cascade)",
            self.corrections.clone(),
        );
        r.register(
            "routing_routes_changed",
            "Queries that started at another tier than the bank alone gives, because of learned corrections",
            self.routes_changed.clone(),
        );
        r.register(
            "batch_width",
            "Mean requests decoded together during each attempt (1 = alone; at most server.max_batch)",
            self.batch_width.clone(),
        );
        r.register_collector(Box::new(live));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r)
            .expect("writing to a String cannot fail");
        out
    }
}

/// One tier's pool figures at scrape time.
#[derive(Debug, Default)]
pub struct LiveTier {
    pub name: String,
    pub loads: u64,
    pub evictions: u64,
    pub loaded: bool,
    /// The tier's estimated cost when resident.
    pub estimated_bytes: u64,
    /// Mean generation speed over the tier's attempts so far.
    pub tokens_per_second: f64,
    /// Accepted / drafted over its speculative attempts, if any.
    pub acceptance: Option<f64>,
    /// Requests running on it now.
    pub running: usize,
}

/// Figures read at scrape time.
#[derive(Debug, Default)]
pub struct Live {
    pub tiers: Vec<LiveTier>,
    pub resident_bytes: u64,
    pub process_rss: u64,
    pub queue_waiting: usize,
    pub queue_running: usize,
    pub queue_depth: usize,
    pub rejected: u64,
    /// With remote tiers: whether Redis answers, and healthy workers.
    pub redis: Option<(bool, usize)>,
    pub kv_store: crate::engine::llama::store::StoreCounts,
    pub probes: crate::probe::ProbeCounts,
    /// Corrections the classifier is trained with.
    pub learned_records: usize,
}

impl prometheus_client::collector::Collector for Live {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let per_tier = |e: &mut DescriptorEncoder,
                        name: &str,
                        help: &str,
                        counter: bool,
                        value: &dyn Fn(&LiveTier) -> u64|
         -> Result<(), std::fmt::Error> {
            let kind = if counter {
                ConstCounter::new(0u64).metric_type()
            } else {
                ConstGauge::new(0i64).metric_type()
            };
            let mut m = e.encode_descriptor(name, help, None, kind)?;
            for t in &self.tiers {
                let label = tier(&t.name);
                let f = m.encode_family(&label)?;
                if counter {
                    ConstCounter::new(value(t)).encode(f)?;
                } else {
                    ConstGauge::new(value(t) as i64).encode(f)?;
                }
            }
            Ok(())
        };
        per_tier(&mut e, "model_loads", "Model loads per tier", true, &|t| {
            t.loads
        })?;
        per_tier(
            &mut e,
            "model_evictions",
            "Models evicted to make room, per tier",
            true,
            &|t| t.evictions,
        )?;
        per_tier(
            &mut e,
            "running_requests",
            "Requests being answered on the tier now (decoded together, at most server.max_batch)",
            false,
            &|t| t.running as u64,
        )?;
        per_tier(
            &mut e,
            "model_loaded",
            "1 while the tier's model is resident",
            false,
            &|t| u64::from(t.loaded),
        )?;
        per_tier(
            &mut e,
            "model_estimated_bytes",
            "Estimated memory of the tier's model when resident, else 0",
            false,
            &|t| if t.loaded { t.estimated_bytes } else { 0 },
        )?;
        let ratio_per_tier = |e: &mut DescriptorEncoder,
                              name: &str,
                              help: &str,
                              value: &dyn Fn(&LiveTier) -> Option<f64>|
         -> Result<(), std::fmt::Error> {
            let mut m =
                e.encode_descriptor(name, help, None, ConstGauge::new(0.0f64).metric_type())?;
            for t in &self.tiers {
                if let Some(v) = value(t) {
                    ConstGauge::new(v).encode(m.encode_family(&tier(&t.name))?)?;
                }
            }
            Ok(())
        };
        ratio_per_tier(
            &mut e,
            "tokens_per_second",
            "Mean generation speed of the tier's attempts so far",
            &|t| Some(t.tokens_per_second),
        )?;
        ratio_per_tier(
            &mut e,
            "speculative_acceptance_ratio",
            "Accepted / drafted tokens over the tier's speculative attempts",
            &|t| t.acceptance,
        )?;
        let gauge = |e: &mut DescriptorEncoder, name: &str, help: &str, v: i64| {
            let g = ConstGauge::new(v);
            g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
        };
        gauge(
            &mut e,
            "resident_bytes",
            "Estimated bytes of all resident models",
            self.resident_bytes as i64,
        )?;
        gauge(
            &mut e,
            "process_resident_memory_bytes",
            "Resident set size of this process",
            self.process_rss as i64,
        )?;
        gauge(
            &mut e,
            "queue_waiting",
            "Requests waiting for the inference thread",
            self.queue_waiting as i64,
        )?;
        gauge(
            &mut e,
            "queue_running",
            "Requests being answered now (all tiers)",
            self.queue_running as i64,
        )?;
        gauge(
            &mut e,
            "queue_depth",
            "Most requests that may wait (server.queue_depth)",
            self.queue_depth as i64,
        )?;
        if let Some((up, workers)) = self.redis {
            gauge(
                &mut e,
                "redis_up",
                "1 while Redis answers (remote tiers)",
                i64::from(up),
            )?;
            gauge(
                &mut e,
                "remote_workers",
                "Workers with a fresh heartbeat",
                workers as i64,
            )?;
        }
        gauge(
            &mut e,
            "kv_store_entries",
            "Saved KV states on disk (cache.dir)",
            self.kv_store.entries as i64,
        )?;
        gauge(
            &mut e,
            "kv_store_bytes",
            "Bytes of saved KV states on disk",
            self.kv_store.bytes as i64,
        )?;
        let counter = |e: &mut DescriptorEncoder, name: &str, help: &str, v: u64| {
            let c = ConstCounter::new(v);
            c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
        };
        counter(
            &mut e,
            "kv_store_hits",
            "Saved KV states restored for a returning tier",
            self.kv_store.hits,
        )?;
        counter(
            &mut e,
            "kv_store_misses",
            "First prompts after a tier loaded with no saved state worth restoring",
            self.kv_store.misses,
        )?;
        counter(
            &mut e,
            "kv_store_restored_tokens",
            "Prompt tokens restored from saved KV states",
            self.kv_store.restored_tokens,
        )?;
        counter(
            &mut e,
            "kv_store_failures",
            "Saved KV states that could not be written or were skipped as bad",
            self.kv_store.failures,
        )?;
        counter(
            &mut e,
            "model_probes",
            "Model files loaded in a probe child before this process loaded them",
            self.probes.probes,
        )?;
        counter(
            &mut e,
            "model_probe_verdicts_reused",
            "Loads that reused the verdict of an earlier probe of the same file",
            self.probes.cached,
        )?;
        counter(
            &mut e,
            "model_probe_failures",
            "Model files found bad by a probe (or by a kept verdict)",
            self.probes.failed,
        )?;
        gauge(
            &mut e,
            "routing_learned_records",
            "Corrections the classifier is trained with",
            self.learned_records as i64,
        )?;
        counter(
            &mut e,
            "rejected_requests",
            "Requests refused because the queue was full",
            self.rejected,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_recorded_and_live_figures() {
        let m = Metrics::default();
        m.attempt(&AttemptRecord {
            tier: "router",
            seconds: 0.5,
            tokens: 12,
            generate_seconds: 0.25,
            escalated: true,
            prompt_tokens: 700,
            cached_tokens: 640,
            drafted: 8,
            accepted: 6,
            batch_width: 3.5,
        });
        m.request("answered", Some("drafter"), 1.5);
        m.request("busy", None, 0.0);
        m.correction("force_escalate");
        m.route_changed();
        let text = m.render(Live {
            tiers: vec![LiveTier {
                name: "router".into(),
                loads: 3,
                evictions: 1,
                loaded: true,
                estimated_bytes: 1 << 20,
                tokens_per_second: 50.5,
                acceptance: Some(0.75),
                running: 3,
            }],
            queue_running: 4,
            resident_bytes: 1 << 20,
            queue_depth: 16,
            rejected: 1,
            redis: Some((true, 2)),
            kv_store: crate::engine::llama::store::StoreCounts {
                hits: 2,
                restored_tokens: 1500,
                entries: 1,
                bytes: 4096,
                ..Default::default()
            },
            probes: crate::probe::ProbeCounts {
                probes: 3,
                cached: 4,
                failed: 1,
            },
            learned_records: 7,
            ..Live::default()
        });
        for line in [
            "xnai_prompt_tokens_cached_total{tier=\"router\"} 640",
            "xnai_kv_store_hits_total 2",
            "xnai_running_requests{tier=\"router\"} 3",
            "xnai_queue_running 4",
            "xnai_batch_width_bucket{le=\"4.0\",tier=\"router\"} 1",
            "xnai_batch_width_bucket{le=\"3.0\",tier=\"router\"} 0",
            "xnai_kv_store_restored_tokens_total 1500",
            "xnai_kv_store_bytes 4096",
            "xnai_model_probes_total 3",
            "xnai_routing_corrections_total{source=\"force_escalate\"} 1",
            "xnai_routing_routes_changed_total 1",
            "xnai_routing_learned_records 7",
            "xnai_model_probe_verdicts_reused_total 4",
            "xnai_model_probe_failures_total 1",
            "xnai_attempts_total{tier=\"router\"} 1",
            "xnai_escalations_total{tier=\"router\"} 1",
            "xnai_generated_tokens_total{tier=\"router\"} 12",
            "xnai_speculative_accepted_tokens_total{tier=\"router\"} 6",
            "xnai_answers_total{tier=\"drafter\"} 1",
            "xnai_requests_total{outcome=\"busy\"} 1",
            "xnai_request_duration_seconds_count 1",
            "xnai_model_loads_total{tier=\"router\"} 3",
            "xnai_model_evictions_total{tier=\"router\"} 1",
            "xnai_model_loaded{tier=\"router\"} 1",
            "xnai_queue_depth 16",
            "xnai_redis_up 1",
            "xnai_remote_workers 2",
            "xnai_rejected_requests_total 1",
            "xnai_resident_bytes 1048576",
            "xnai_tokens_per_second{tier=\"router\"} 50.5",
            "xnai_speculative_acceptance_ratio{tier=\"router\"} 0.75",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
