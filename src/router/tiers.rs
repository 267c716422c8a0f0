//! The one seam in front of every tier: the cascade asks for an attempt
//! and does not care where it runs. A local tier takes the inference
//! queue's turn (once, kept for the rest of the cascade) and a pool lease;
//! a remote tier builds its own Redis job and lets the local turn go.

use super::queue::{Scheduler, Ticket};
use crate::activity::Call;
use crate::cascade::Draft;
use crate::config::Config;
use crate::engine::{Engine, GenerateRequest, Generation, Message, Sampling};
use crate::error::{Error, Result};
use crate::pool::TierPool;
use crate::remote::wire::{Handoff, Job};
use crate::remote::{RemoteError, RemoteTiers};
use std::time::Instant;

/// What one attempt asks of a tier.
pub struct Work<'a> {
    pub messages: Vec<Message>,
    pub max_tokens: u32,
    pub sampling: Sampling,
    /// The lower tier's answer: to verify when `verify`, else already
    /// framed into `messages` (remote workers also receive it as data).
    pub handoff: Option<&'a Draft>,
    pub verify: bool,
}

impl Work<'_> {
    /// The lower answer this attempt verifies, if it verifies one.
    pub fn to_verify(&self) -> Option<String> {
        self.handoff
            .filter(|_| self.verify)
            .map(|d| d.answer.clone())
    }
}

/// An attempt's generation and what it cost.
pub struct Ran {
    pub generation: Generation,
    pub load_ms: f64,
    /// Queue, lease and inference-thread waits (or the wait for a worker).
    pub queue_ms: f64,
    /// The worker that answered, for a remote tier.
    pub worker: Option<String>,
}

/// Where the router's tiers run. Borrowed from the router for one cascade.
pub struct Tiers<'r, E: Engine> {
    pub config: &'r Config,
    pub pool: &'r TierPool<E>,
    pub queue: &'r Scheduler,
    pub remote: Option<&'r RemoteTiers>,
    /// The resident tiers, for the queue's choice of who runs next.
    pub resident: &'r (dyn Fn() -> Vec<usize> + Sync),
    /// The local inference turn, taken by the first local attempt.
    pub turn: Option<Ticket<'r>>,
}

impl<E: Engine> Tiers<'_, E> {
    /// Runs `work` on `tier`, wherever it is served.
    ///
    /// # Errors
    ///
    /// [`Error::Busy`] when the queue is full, [`Error::Cancelled`] when the
    /// call is cancelled while queued, the pool's, engine's or remote
    /// error when the tier fails.
    pub async fn run(&mut self, tier: usize, work: Work<'_>, call: &Call) -> Result<Ran> {
        if self.config.tiers[tier].remote {
            // Remote attempts run without the local turn.
            self.turn = None;
            self.remote(tier, work, call).await
        } else {
            let queue_ms = self.take_turn(tier, call).await?;
            let mut ran = self.local(tier, work, call).await?;
            ran.queue_ms += queue_ms;
            Ok(ran)
        }
    }

    /// Waits for the local inference turn unless this cascade holds one,
    /// which then moves to `tier`; returns the milliseconds waited.
    async fn take_turn(&mut self, tier: usize, call: &Call) -> Result<f64> {
        if let Some(turn) = &mut self.turn {
            turn.move_to(tier);
            return Ok(0.0);
        }
        let waited = Instant::now();
        call.activity.queued(self.queue.queued());
        let turn = tokio::select! {
            turn = self.queue.admit(tier, self.resident) => turn?,
            _ = call.cancel.cancelled() => {
                return Err(Error::Cancelled { stage: Some("while queued".into()) })
            }
        };
        self.turn = Some(turn);
        Ok(waited.elapsed().as_secs_f64() * 1e3)
    }

    async fn local(&self, tier: usize, work: Work<'_>, call: &Call) -> Result<Ran> {
        let name = &self.config.tiers[tier].name;
        call.activity.loading(name, None);
        // A load is not interrupted (the pool's bookkeeping stays whole);
        // a cancellation during it stops the generation before its first token.
        let ready = self.pool.ready(tier).await?;
        let request = GenerateRequest {
            sampling: work.sampling,
            verify: work.to_verify(),
            cancel: call.cancel.clone(),
            progress: call.activity.generating(name, work.max_tokens, None),
            ..GenerateRequest::new(work.messages, work.max_tokens)
        };
        let served = ready.run(request).await?;
        Ok(Ran {
            generation: served.generation,
            load_ms: served.load_ms,
            queue_ms: served.wait_ms,
            worker: None,
        })
    }

    /// A job on the tier's Redis stream, answered by whichever worker takes it.
    async fn remote(&self, tier: usize, work: Work<'_>, call: &Call) -> Result<Ran> {
        let name = &self.config.tiers[tier].name;
        let remote = self
            .remote
            .ok_or_else(|| RemoteError::NoRedis { tier: name.clone() })?;
        let handoff = work.handoff.map(|d| Handoff {
            from_tier: d.tier.clone(),
            confidence: d.confidence,
            draft: d.answer.clone(),
            verify: work.verify,
        });
        let job = Job::new(name, work.messages, work.max_tokens, work.sampling, handoff);
        let served = remote.run(job, call).await?;
        Ok(Ran {
            generation: served.generation,
            load_ms: served.load_ms,
            queue_ms: served.wait_ms,
            worker: Some(served.worker),
        })
    }
}
