//! What one route_query or force_escalate call is doing right now, for
//! progress notifications: its phase (queued, loading a tier, generating)
//! and a progress number that only ever grows.
//!
//! The router writes phases as it goes; the engine counts emitted tokens
//! into a [`Progress`]; the MCP layer reads [`Activity::snapshot`] on a
//! timer and sends a notification when the number has grown.

use crate::engine::{Cancel, Progress};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, PartialEq)]
enum Phase {
    Starting,
    Queued {
        ahead: usize,
    },
    /// A remote tier's job is in its stream, not yet taken.
    WaitingForWorker {
        tier: String,
    },
    /// A worker took it.
    Claimed {
        tier: String,
        worker: String,
    },
    Loading {
        tier: String,
        worker: Option<String>,
    },
    Generating {
        tier: String,
        max_tokens: u32,
        worker: Option<String>,
    },
}

/// `tier X` or `tier X on worker W`.
fn place(tier: &str, worker: &Option<String>) -> String {
    match worker {
        Some(w) => format!("tier {tier} on worker {w}"),
        None => format!("tier {tier}"),
    }
}

#[derive(Debug)]
struct State {
    phase: Phase,
    /// Phase changes so far.
    steps: u32,
    /// Tokens of earlier attempts.
    tokens_before: u32,
    /// Tokens of the current attempt, written by the engine.
    current: Progress,
}

/// Shared between the router (writer) and a progress reporter (reader).
#[derive(Debug, Clone)]
pub struct Activity(Arc<Mutex<State>>);

impl Default for Activity {
    fn default() -> Self {
        Activity(Arc::new(Mutex::new(State {
            phase: Phase::Starting,
            steps: 0,
            tokens_before: 0,
            current: Progress::default(),
        })))
    }
}

/// One reading: `progress` never decreases between readings.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub progress: f64,
    pub message: String,
}

impl Activity {
    fn set(&self, phase: Phase) {
        let mut st = self.0.lock().unwrap();
        if st.phase != phase {
            st.phase = phase;
            st.steps += 1;
        }
    }

    pub fn queued(&self, ahead: usize) {
        self.set(Phase::Queued { ahead });
    }

    pub fn waiting_for_worker(&self, tier: &str) {
        self.set(Phase::WaitingForWorker { tier: tier.into() });
    }

    pub fn claimed(&self, tier: &str, worker: &str) {
        self.set(Phase::Claimed {
            tier: tier.into(),
            worker: worker.into(),
        });
    }

    /// Loading `tier`'s model, here (`worker` None) or on a worker.
    pub fn loading(&self, tier: &str, worker: Option<&str>) {
        self.set(Phase::Loading {
            tier: tier.into(),
            worker: worker.map(Into::into),
        });
    }

    /// Starts an attempt; the returned counter goes to the engine (or is
    /// set from a worker's reports).
    pub fn generating(&self, tier: &str, max_tokens: u32, worker: Option<&str>) -> Progress {
        let mut st = self.0.lock().unwrap();
        st.tokens_before += st.current.tokens();
        st.current = Progress::default();
        st.phase = Phase::Generating {
            tier: tier.into(),
            max_tokens,
            worker: worker.map(Into::into),
        };
        st.steps += 1;
        st.current.clone()
    }

    pub fn snapshot(&self) -> Snapshot {
        let st = self.0.lock().unwrap();
        let tokens = st.current.tokens();
        let message = match &st.phase {
            Phase::Starting => "starting".to_string(),
            Phase::Queued { ahead } => format!("queued: {ahead} request(s) ahead"),
            Phase::WaitingForWorker { tier } => format!("tier {tier}: waiting for a worker"),
            Phase::Claimed { tier, worker } => format!("tier {tier}: taken by worker {worker}"),
            Phase::Loading { tier, worker } => {
                format!("{}: loading the model", place(tier, worker))
            }
            Phase::Generating {
                tier,
                max_tokens,
                worker,
            } => {
                format!(
                    "{}: generating, {tokens} of {max_tokens} tokens",
                    place(tier, worker)
                )
            }
        };
        Snapshot {
            progress: f64::from(st.steps) + f64::from(st.tokens_before) + f64::from(tokens),
            message,
        }
    }
}

/// What a caller passes along with a request: how to stop it and where it
/// reports what it is doing.
#[derive(Debug, Clone, Default)]
pub struct Call {
    pub cancel: Cancel,
    pub activity: Activity,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_only_grows_across_phases_and_attempts() {
        let a = Activity::default();
        let mut last = a.snapshot().progress;
        let mut check = |a: &Activity| {
            let s = a.snapshot();
            assert!(s.progress > last, "{} after {last}", s.progress);
            last = s.progress;
            s.message
        };
        a.queued(2);
        assert_eq!(check(&a), "queued: 2 request(s) ahead");
        a.loading("drafter", None);
        assert_eq!(check(&a), "tier drafter: loading the model");
        let p = a.generating("drafter", 64, None);
        p.set(10);
        assert_eq!(check(&a), "tier drafter: generating, 10 of 64 tokens");
        // The next attempt starts its own count; the total still grows.
        let p = a.generating("refiner", 128, None);
        assert_eq!(check(&a), "tier refiner: generating, 0 of 128 tokens");
        p.set(1);
        check(&a);
        // A remote attempt, taken over by a second worker after the first died.
        a.waiting_for_worker("expert");
        assert_eq!(check(&a), "tier expert: waiting for a worker");
        a.claimed("expert", "w1");
        assert_eq!(check(&a), "tier expert: taken by worker w1");
        let p = a.generating("expert", 32, Some("w1"));
        p.set(20);
        assert_eq!(
            check(&a),
            "tier expert on worker w1: generating, 20 of 32 tokens"
        );
        a.claimed("expert", "w2");
        check(&a);
        a.generating("expert", 32, Some("w2"));
        assert_eq!(
            check(&a),
            "tier expert on worker w2: generating, 0 of 32 tokens"
        );
        // The same phase again is no step.
        a.loading("x", None);
        let before = a.snapshot().progress;
        a.loading("x", None);
        assert_eq!(a.snapshot().progress, before);
    }
}
