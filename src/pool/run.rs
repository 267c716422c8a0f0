//! One way to run a tier: lease it (with its draft), generate, release,
//! and preload the next tier. The router, `ask` and the Redis worker all
//! go through here, so none of them can forget a step.

use super::{Lease, PoolError, TierPool};
use crate::engine::{Engine, EngineError, GenerateRequest, Generation};
use crate::error::Error;
use std::time::Instant;

/// A generation and what it cost on the way.
#[derive(Debug, Clone)]
pub struct Served {
    pub generation: Generation,
    /// Loading the tier and its draft (0 when both were resident).
    pub load_ms: f64,
    /// Waiting for an in-use model to become evictable and for the
    /// inference thread; prompt processing and generation not included.
    pub wait_ms: f64,
}

/// A tier leased and ready to generate: the step between loading and
/// generating, where callers report that generation starts.
pub struct Ready<E: Engine> {
    pool: TierPool<E>,
    tier: usize,
    lease: Lease<E>,
    draft: Option<Lease<E>>,
}

impl<E: Engine> Ready<E> {
    /// Milliseconds spent loading the tier and its draft.
    pub fn load_ms(&self) -> f64 {
        self.lease.load_ms + self.draft.as_ref().map_or(0.0, |d| d.load_ms)
    }

    /// Generates `request` on the leased tier, decoding speculatively when
    /// the tier has a draft (the request's own `speculation` is replaced by
    /// the tier's), then releases both leases and preloads the next tier.
    ///
    /// # Errors
    ///
    /// The engine's error (decode failure, prompt too long, stopped thread);
    /// the leases are released either way.
    pub async fn run(self, mut request: GenerateRequest) -> Result<Served, EngineError> {
        let load_ms = self.load_ms();
        let lease_wait_ms = self.lease.wait_ms;
        request.speculation = self
            .lease
            .tier()
            .speculation(self.draft.as_ref().map(|d| d.model_id()));
        let called = Instant::now();
        let generated = self.lease.generate(request).await;
        let wall_ms = called.elapsed().as_secs_f64() * 1e3;
        drop(self.lease);
        drop(self.draft);
        self.pool.preload_after(self.tier);
        let generation = generated?;
        let thread_wait_ms = (wall_ms - generation.prompt_ms - generation.generate_ms).max(0.0);
        Ok(Served {
            generation,
            load_ms,
            wait_ms: lease_wait_ms + thread_wait_ms,
        })
    }
}

impl<E: Engine> TierPool<E> {
    /// Leases `tier` and its draft, loading them if needed.
    ///
    /// # Errors
    ///
    /// As [`TierPool::acquire_with_draft`].
    pub async fn ready(&self, tier: usize) -> Result<Ready<E>, PoolError> {
        let (lease, draft) = self.acquire_with_draft(tier).await?;
        Ok(Ready {
            pool: self.clone(),
            tier,
            lease,
            draft,
        })
    }

    /// Runs `request` on `tier`: [`TierPool::ready`], then [`Ready::run`].
    ///
    /// # Errors
    ///
    /// The pool's error when the tier cannot load, the engine's when
    /// generation fails.
    pub async fn run(&self, tier: usize, request: GenerateRequest) -> Result<Served, Error> {
        Ok(self.ready(tier).await?.run(request).await?)
    }
}
