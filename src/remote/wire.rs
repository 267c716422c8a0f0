//! What travels through Redis: the key layout, the job a front end
//! enqueues, the events a worker streams back while it works, the result it
//! stores, and the heartbeat it advertises. Pure: parsed and laid out here,
//! unit-tested without Redis.

use crate::engine::{Generation, Message, Sampling};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// The consumer group every worker of a tier joins.
pub const GROUP: &str = "workers";
/// Where malformed jobs go, with the reason.
pub const DEAD_LETTER: &str = "xnai:dead";
/// Entries kept in the dead-letter stream (approximately).
pub const DEAD_LETTER_MAXLEN: usize = 1000;
/// The job format this build reads and writes.
pub const JOB_VERSION: u32 = 1;

/// The stream of jobs for `tier`.
pub fn jobs_key(tier: &str) -> String {
    format!("xnai:jobs:{tier}")
}

/// The stream a worker reports one attempt's progress on.
pub fn events_key(attempt: &str) -> String {
    format!("xnai:events:{attempt}")
}

/// Where one attempt's result is stored, once (`SET NX`).
pub fn result_key(attempt: &str) -> String {
    format!("xnai:result:{attempt}")
}

/// Set by the front end to cancel one attempt.
pub fn cancel_key(attempt: &str) -> String {
    format!("xnai:cancel:{attempt}")
}

/// A worker's heartbeat (expires when the worker stops renewing it).
pub fn worker_key(id: &str) -> String {
    format!("xnai:worker:{id}")
}

/// Matches every worker heartbeat key.
pub const WORKER_PATTERN: &str = "xnai:worker:*";

/// One cascade attempt, as a front end hands it to the workers of a tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    pub version: u32,
    /// Unique per attempt: keys the result, so it is answered once.
    pub attempt: String,
    pub tier: String,
    /// The whole conversation: system prompt, history, the query, and the
    /// lower tier's draft framed for refinement (see [`crate::cascade::messages`]).
    pub messages: Vec<Message>,
    pub max_tokens: u32,
    pub sampling: Sampling,
    /// The lower tier's answer this attempt refines, when it escalated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff: Option<Handoff>,
    /// When the front end enqueued it (Unix milliseconds).
    pub enqueued_unix_ms: u64,
}

/// The draft an escalation hands up, as it travels in a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handoff {
    pub from_tier: String,
    pub confidence: f64,
    pub draft: String,
    /// The worker verifies `draft` (routing.handoff: verify) rather than
    /// finding it framed in the messages.
    #[serde(default)]
    pub verify: bool,
}

impl Job {
    /// A new attempt on `tier`, enqueued now, under a fresh attempt id.
    pub fn new(
        tier: &str,
        messages: Vec<Message>,
        max_tokens: u32,
        sampling: Sampling,
        handoff: Option<Handoff>,
    ) -> Self {
        Job {
            version: JOB_VERSION,
            attempt: uuid::Uuid::new_v4().to_string(),
            tier: tier.to_string(),
            messages,
            max_tokens,
            sampling,
            handoff,
            enqueued_unix_ms: unix_ms(),
        }
    }

    /// The stream entry's fields.
    pub fn fields(&self) -> [(&'static str, String); 1] {
        [(
            "job",
            serde_json::to_string(self).expect("a job serializes"),
        )]
    }
}

/// Reads a job from a stream entry of `stream_tier`'s stream; the error
/// says what is wrong, for the dead-letter stream.
///
/// # Errors
///
/// A missing or non-UTF-8 `job` field, JSON that does not parse as a job,
/// another version, a job for another tier, or one without messages.
pub fn parse_job(job_field: Option<&[u8]>, stream_tier: &str) -> Result<Job, String> {
    let raw = job_field.ok_or("the entry has no `job` field")?;
    let text = std::str::from_utf8(raw).map_err(|e| format!("`job` is not UTF-8: {e}"))?;
    let job: Job =
        serde_json::from_str(text).map_err(|e| format!("`job` is not a valid job: {e}"))?;
    if job.version != JOB_VERSION {
        return Err(format!(
            "job version {} but this worker reads version {JOB_VERSION}",
            job.version
        ));
    }
    if job.tier != stream_tier {
        return Err(format!(
            "job for tier {:?} on the stream of tier {stream_tier:?}",
            job.tier
        ));
    }
    if job.messages.is_empty() {
        return Err("the job has no messages".into());
    }
    if job.attempt.is_empty() {
        return Err("the job has an empty attempt id".into());
    }
    Ok(job)
}

/// What a worker reports while it works on an attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A worker took the job (again, after a reclaim).
    Claimed { worker: String },
    /// It is loading the tier's model.
    Loading { worker: String },
    /// It started generating, up to `max_tokens`.
    Generating { worker: String, max_tokens: u32 },
    /// Tokens generated so far.
    Tokens { worker: String, n: u32 },
    /// The result is stored.
    Done { worker: String },
}

impl Event {
    /// The stream entry's fields.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let (kind, worker, n) = match self {
            Event::Claimed { worker } => ("claimed", worker, None),
            Event::Loading { worker } => ("loading", worker, None),
            Event::Generating { worker, max_tokens } => ("generating", worker, Some(*max_tokens)),
            Event::Tokens { worker, n } => ("tokens", worker, Some(*n)),
            Event::Done { worker } => ("done", worker, None),
        };
        let mut f = vec![("kind", kind.to_string()), ("worker", worker.clone())];
        if let Some(n) = n {
            f.push(("n", n.to_string()));
        }
        f
    }

    /// Reads an event entry; `None` for anything else.
    pub fn parse(fields: &HashMap<String, String>) -> Option<Event> {
        let worker = fields.get("worker")?.clone();
        let n = || fields.get("n").and_then(|n| n.parse().ok());
        Some(match fields.get("kind")?.as_str() {
            "claimed" => Event::Claimed { worker },
            "loading" => Event::Loading { worker },
            "generating" => Event::Generating {
                worker,
                max_tokens: n()?,
            },
            "tokens" => Event::Tokens { worker, n: n()? },
            "done" => Event::Done { worker },
            _ => return None,
        })
    }
}

/// The stored answer to one attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobResult {
    /// The worker that answered.
    pub worker: String,
    /// From enqueue to the worker taking it (Unix clocks of two machines).
    pub wait_ms: f64,
    pub load_ms: f64,
    pub outcome: JobOutcome,
}

/// How an attempt ended on the worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum JobOutcome {
    /// Generated (possibly cut short by a cancellation: see its finish).
    Answered { generation: Box<Generation> },
    /// The prompt does not fit the tier's context on the worker.
    PromptTooLong { tokens: usize, context: u32 },
    /// Cancelled before it started.
    Cancelled,
    /// Loading or generation failed.
    Failed { message: String },
}

/// What a worker advertises in its heartbeat key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct WorkerInfo {
    pub id: String,
    pub host: String,
    pub pid: u32,
    /// Tiers it takes jobs for.
    pub tiers: Vec<String>,
    /// Tiers whose models it holds now.
    pub resident: Vec<String>,
    /// Sum of the resident models' estimates.
    pub estimated_bytes: u64,
    pub process_rss: u64,
    /// The tier it is generating for now, if any (the oldest job in hand).
    pub busy: Option<String>,
    /// Jobs it is working on now.
    #[serde(default)]
    pub jobs_in_hand: usize,
    /// Jobs it works on at once (`worker --max-batch`).
    #[serde(default = "one")]
    pub max_batch: usize,
    pub jobs_done: u64,
    pub started_unix_ms: u64,
    pub heartbeat_unix_ms: u64,
    pub heartbeat_secs: u64,
}

fn one() -> usize {
    1
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        Job {
            version: JOB_VERSION,
            attempt: "a1".into(),
            tier: "drafter".into(),
            messages: vec![Message::new("user", "hi")],
            max_tokens: 16,
            sampling: Sampling::Random {
                temperature: 0.7,
                top_p: 0.95,
                seed: 3,
            },
            handoff: Some(Handoff {
                verify: true,
                from_tier: "router".into(),
                confidence: 0.4,
                draft: "hello".into(),
            }),
            enqueued_unix_ms: 1,
        }
    }

    #[test]
    fn a_job_round_trips_through_its_stream_field() {
        let j = job();
        let [(name, text)] = j.fields();
        assert_eq!(name, "job");
        assert_eq!(parse_job(Some(text.as_bytes()), "drafter").unwrap(), j);
    }

    #[test]
    fn malformed_jobs_say_what_is_wrong() {
        let err = |field: Option<&[u8]>, tier| parse_job(field, tier).unwrap_err();
        assert!(err(None, "drafter").contains("no `job` field"));
        assert!(err(Some(b"\xff"), "drafter").contains("not UTF-8"));
        assert!(err(Some(b"{not json"), "drafter").contains("not a valid job"));
        let text = job().fields()[0].1.clone();
        assert!(err(Some(text.as_bytes()), "refiner").contains("on the stream of tier \"refiner\""));
        let mut j = job();
        j.version = 9;
        let text = serde_json::to_string(&j).unwrap();
        assert!(err(Some(text.as_bytes()), "drafter").contains("version 9"));
        j.version = JOB_VERSION;
        j.messages.clear();
        let text = serde_json::to_string(&j).unwrap();
        assert!(err(Some(text.as_bytes()), "drafter").contains("no messages"));
    }

    #[test]
    fn events_round_trip_and_unknown_ones_are_ignored() {
        let all = [
            Event::Claimed { worker: "w".into() },
            Event::Loading { worker: "w".into() },
            Event::Generating {
                worker: "w".into(),
                max_tokens: 64,
            },
            Event::Tokens {
                worker: "w".into(),
                n: 7,
            },
            Event::Done { worker: "w".into() },
        ];
        for e in all {
            let map = e
                .fields()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            assert_eq!(Event::parse(&map), Some(e));
        }
        let odd: HashMap<String, String> = [
            ("kind".into(), "dance".into()),
            ("worker".into(), "w".into()),
        ]
        .into();
        assert_eq!(Event::parse(&odd), None);
        let no_n: HashMap<String, String> = [
            ("kind".into(), "tokens".into()),
            ("worker".into(), "w".into()),
        ]
        .into();
        assert_eq!(Event::parse(&no_n), None);
    }
}
