//! The tier pool: loads tiers lazily, keeps at most `max_loaded` models
//! resident inside the byte budget, evicts the least recently used idle model,
//! and never evicts a model while a [`Lease`] on it is alive. [`TierPool::run`]
//! is the one way to run a request on a tier.

pub mod policy;
mod run;

pub use run::{Ready, Served};

use crate::config::{ByteSize, Config, Tier};
use crate::engine::{Engine, EngineError, GenerateRequest, Generation, LoadSpec, ModelId};
use crate::memory::process_rss;
use policy::{plan_admission, Admission, ResidentView};
use serde::Serialize;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::Notify;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error(transparent)]
    UnknownTier(#[from] crate::config::UnknownTier),
    #[error("tier {tier}: {path} needs an estimated {needed} but models may use {allowance} (memory.budget - memory.reserve)")]
    TooLarge {
        tier: String,
        path: String,
        needed: ByteSize,
        allowance: ByteSize,
    },
    #[error("tier {tier} and its draft {draft} must be resident together: {needed} together, but models may use {allowance} (memory.budget - memory.reserve) and at most {max_loaded} at once")]
    PairTooLarge {
        tier: String,
        draft: String,
        needed: ByteSize,
        allowance: ByteSize,
        max_loaded: usize,
    },
    #[error("tier {tier} is served by remote workers (remote: true), not by this process")]
    Remote { tier: String },
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// One resident model.
#[derive(Debug, Clone)]
struct Slot {
    tier: usize,
    id: ModelId,
    leases: usize,
    last_used: u64,
    last_used_at: Instant,
    load_ms: f64,
    rss_after_load: u64,
}

/// Counters per tier.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TierCounters {
    pub loads: u64,
    pub evictions: u64,
    pub load_failures: u64,
    pub leases: u64,
    /// Process RSS measured right after this tier's latest load (0: never loaded).
    pub rss_after_load: u64,
    /// Milliseconds of this tier's latest load.
    pub last_load_ms: f64,
}

#[derive(Debug, Default)]
struct State {
    resident: Vec<Slot>,
    clock: u64,
    counters: Vec<TierCounters>,
}

impl State {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn views(&self, config: &Config) -> Vec<ResidentView> {
        self.resident
            .iter()
            .map(|s| ResidentView {
                tier: s.tier,
                cost: config.tiers[s.tier].cost.total,
                in_use: s.leases > 0,
                last_used: s.last_used,
            })
            .collect()
    }
}

struct Inner<E> {
    engine: E,
    config: Arc<Config>,
    /// A std mutex: held only for short, synchronous bookkeeping, never across
    /// an `.await`, so it cannot stall the runtime or deadlock with the engine.
    state: Mutex<State>,
    /// Serialises loads and evictions, so two requests never both decide that
    /// the same free bytes are theirs. A tokio mutex: held across the load.
    admission: tokio::sync::Mutex<()>,
    /// Signalled when a lease ends, for requests waiting for an idle model.
    released: Notify,
}

/// Cheap clonable handle to the pool.
pub struct TierPool<E: Engine> {
    inner: Arc<Inner<E>>,
}

impl<E: Engine> Clone for TierPool<E> {
    fn clone(&self) -> Self {
        TierPool {
            inner: self.inner.clone(),
        }
    }
}

/// A model in use. While it lives, the model stays resident; dropping it
/// (on any path, early returns included) makes the model evictable again.
pub struct Lease<E: Engine> {
    inner: Arc<Inner<E>>,
    tier: usize,
    id: ModelId,
    /// Milliseconds this acquisition spent loading (0 when already resident).
    pub load_ms: f64,
    /// Milliseconds spent waiting for an in-use model to become evictable.
    pub wait_ms: f64,
}

impl<E: Engine> Lease<E> {
    pub fn tier(&self) -> &Tier {
        &self.inner.config.tiers[self.tier]
    }

    /// The engine's handle of the leased model.
    pub fn model_id(&self) -> ModelId {
        self.id
    }

    /// Generates with the leased model.
    ///
    /// # Errors
    ///
    /// The engine's error (decode failure, prompt too long, stopped thread).
    pub async fn generate(&self, request: GenerateRequest) -> Result<Generation, EngineError> {
        self.inner.engine.generate(self.id, request).await
    }
}

impl<E: Engine> Drop for Lease<E> {
    fn drop(&mut self) {
        let mut st = self.inner.state.lock().unwrap();
        let now = st.tick();
        if let Some(s) = st.resident.iter_mut().find(|s| s.id == self.id) {
            s.leases -= 1;
            s.last_used = now;
            s.last_used_at = Instant::now();
        }
        drop(st);
        self.inner.released.notify_waiters();
    }
}

/// One resident model in a status report.
#[derive(Debug, Clone, Serialize)]
pub struct ResidentStatus {
    pub tier: String,
    pub model: String,
    pub estimated_bytes: u64,
    pub in_use: usize,
    pub load_ms: f64,
    /// Process RSS measured right after this model loaded.
    pub rss_after_load: u64,
    /// Milliseconds since a request last used (or released) it.
    pub idle_ms: f64,
}

/// What the pool holds now.
#[derive(Debug, Clone, Serialize)]
pub struct PoolStatus {
    pub budget: u64,
    pub reserve: u64,
    /// Bytes the resident models may use: budget - reserve.
    pub model_allowance: u64,
    pub max_loaded: usize,
    /// Resident models, least recently used first.
    pub resident: Vec<ResidentStatus>,
    /// Sum of the resident models' estimates.
    pub estimated_bytes: u64,
    /// This process's resident set size, measured now.
    pub process_rss: u64,
    pub counters: Vec<(String, TierCounters)>,
}

impl<E: Engine> TierPool<E> {
    pub fn new(engine: E, config: Arc<Config>) -> Self {
        let counters = vec![TierCounters::default(); config.tiers.len()];
        TierPool {
            inner: Arc::new(Inner {
                engine,
                config,
                state: Mutex::new(State {
                    counters,
                    ..State::default()
                }),
                admission: tokio::sync::Mutex::new(()),
                released: Notify::new(),
            }),
        }
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.inner.config
    }

    pub fn engine(&self) -> &E {
        &self.inner.engine
    }

    /// Index of the tier called `name`.
    ///
    /// # Errors
    ///
    /// [`PoolError::UnknownTier`] listing the known tiers.
    pub fn tier_index(&self, name: &str) -> Result<usize, PoolError> {
        Ok(self.inner.config.tier_index(name)?)
    }

    /// Leases tier `tier`, loading it (and evicting idle models) if needed.
    /// Waits while the only way to make room is to evict a model in use.
    ///
    /// # Errors
    ///
    /// [`PoolError::TooLarge`] when the model can never fit, or the engine's
    /// load error; either way the pool stays usable.
    pub async fn acquire(&self, tier: usize) -> Result<Lease<E>, PoolError> {
        self.acquire_with(tier, &[]).await
    }

    /// Leases `tier` and, when it has one, its draft tier: the two are
    /// resident together (the draft first, then the target without evicting
    /// it). A draft already resident as a lower tier is reused.
    ///
    /// # Errors
    ///
    /// As [`TierPool::acquire`], for either model.
    pub async fn acquire_with_draft(
        &self,
        tier: usize,
    ) -> Result<(Lease<E>, Option<Lease<E>>), PoolError> {
        match self.inner.config.tiers[tier].draft {
            None => Ok((self.acquire(tier).await?, None)),
            Some(d) => {
                // Check first: while we hold the draft's lease, waiting for
                // room that only releasing it could make would never end.
                let cfg = &self.inner.config;
                let (t, dt) = (&cfg.tiers[tier], &cfg.tiers[d]);
                let needed = t.cost.total + dt.cost.total;
                if needed > cfg.memory.model_allowance() || cfg.memory.max_loaded < 2 {
                    return Err(PoolError::PairTooLarge {
                        tier: t.name.clone(),
                        draft: dt.name.clone(),
                        needed: ByteSize(needed),
                        allowance: ByteSize(cfg.memory.model_allowance()),
                        max_loaded: cfg.memory.max_loaded,
                    });
                }
                // Neither load evicts the other half of the pair.
                let draft = self.acquire_with(d, &[tier]).await?;
                let target = self.acquire_with(tier, &[d]).await?;
                Ok((target, Some(draft)))
            }
        }
    }

    async fn acquire_with(&self, tier: usize, protect: &[usize]) -> Result<Lease<E>, PoolError> {
        let inner = &self.inner;
        let t = &inner.config.tiers[tier];
        if t.remote {
            return Err(PoolError::Remote {
                tier: t.name.clone(),
            });
        }
        let started = Instant::now();
        loop {
            // Register for wake-ups before looking, so no release is missed.
            let released = inner.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();

            let _admission = inner.admission.lock().await;
            let plan = {
                let mut st = inner.state.lock().unwrap();
                let now = st.tick();
                if let Some(s) = st.resident.iter_mut().find(|s| s.tier == tier) {
                    s.leases += 1;
                    s.last_used = now;
                    s.last_used_at = Instant::now();
                    let id = s.id;
                    st.counters[tier].leases += 1;
                    return Ok(Lease {
                        inner: inner.clone(),
                        tier,
                        id,
                        load_ms: 0.0,
                        wait_ms: started.elapsed().as_secs_f64() * 1e3,
                    });
                }
                plan_admission(
                    &st.views(&inner.config),
                    t.cost.total,
                    inner.config.memory.model_allowance(),
                    inner.config.memory.max_loaded,
                    protect,
                )
            };
            let evict = match plan {
                Admission::Evict(evict) => evict,
                Admission::TooLarge => {
                    return Err(PoolError::TooLarge {
                        tier: t.name.clone(),
                        path: t.model.display().to_string(),
                        needed: ByteSize(t.cost.total),
                        allowance: ByteSize(inner.config.memory.model_allowance()),
                    })
                }
                Admission::WaitForIdle => {
                    drop(_admission);
                    tracing::debug!(tier = %t.name, "waiting for an in-use model to become idle");
                    released.await;
                    continue;
                }
            };
            for victim in evict {
                self.evict(victim).await;
            }
            let wait_ms = started.elapsed().as_secs_f64() * 1e3;
            let spec = LoadSpec {
                name: t.name.clone(),
                path: t.model.clone(),
                context: t.context,
                threads: t.threads,
                mlock: t.mlock,
                sequences: t.sequences,
            };
            let loaded = match inner.engine.load(spec).await {
                Ok(l) => l,
                Err(e) => {
                    inner.state.lock().unwrap().counters[tier].load_failures += 1;
                    tracing::warn!(tier = %t.name, error = %e, "load failed");
                    return Err(e.into());
                }
            };
            let rss = process_rss();
            let mut st = inner.state.lock().unwrap();
            let now = st.tick();
            st.resident.push(Slot {
                tier,
                id: loaded.id,
                leases: 1,
                last_used: now,
                last_used_at: Instant::now(),
                load_ms: loaded.load_ms,
                rss_after_load: rss,
            });
            st.counters[tier].loads += 1;
            st.counters[tier].rss_after_load = rss;
            st.counters[tier].last_load_ms = loaded.load_ms;
            st.counters[tier].leases += 1;
            return Ok(Lease {
                inner: inner.clone(),
                tier,
                id: loaded.id,
                load_ms: loaded.load_ms,
                wait_ms,
            });
        }
    }

    async fn evict(&self, tier: usize) {
        let id = {
            let mut st = self.inner.state.lock().unwrap();
            let Some(pos) = st.resident.iter().position(|s| s.tier == tier) else {
                return;
            };
            st.counters[tier].evictions += 1;
            st.resident.remove(pos).id
        };
        tracing::info!(tier = %self.inner.config.tiers[tier].name, "evicting");
        self.inner.engine.unload(id).await;
    }

    /// After a request on `tier`, loads the next tier up when `preload_next`
    /// is on and it fits without evicting anything in use or `tier` itself.
    /// Runs in the background; failures are logged, never returned.
    pub fn preload_after(&self, tier: usize) {
        let next = tier + 1;
        let tiers = &self.inner.config.tiers;
        if !self.inner.config.memory.preload_next || next >= tiers.len() || tiers[next].remote {
            return;
        }
        if self.resident_tiers().contains(&next) {
            return;
        }
        let pool = self.clone();
        tokio::spawn(async move {
            let views = pool.inner.state.lock().unwrap().views(&pool.inner.config);
            let cfg = &pool.inner.config;
            let plan = plan_admission(
                &views,
                cfg.tiers[next].cost.total,
                cfg.memory.model_allowance(),
                cfg.memory.max_loaded,
                &[tier],
            );
            if matches!(plan, Admission::Evict(_)) {
                match pool.acquire_with(next, &[tier]).await {
                    Ok(lease) => drop(lease),
                    Err(e) => tracing::warn!(error = %e, "preload failed"),
                }
            }
        });
    }

    /// Tier indices resident now, least recently used first.
    pub fn resident_tiers(&self) -> Vec<usize> {
        let st = self.inner.state.lock().unwrap();
        let mut v: Vec<&Slot> = st.resident.iter().collect();
        v.sort_by_key(|s| s.last_used);
        v.iter().map(|s| s.tier).collect()
    }

    /// Sum of the estimates of the resident models.
    pub fn estimated_bytes(&self) -> u64 {
        let st = self.inner.state.lock().unwrap();
        st.resident
            .iter()
            .map(|s| self.inner.config.tiers[s.tier].cost.total)
            .sum()
    }

    /// A snapshot of residency, estimates, measured RSS and counters.
    pub fn status(&self) -> PoolStatus {
        let cfg = &self.inner.config;
        let st = self.inner.state.lock().unwrap();
        let mut slots: Vec<&Slot> = st.resident.iter().collect();
        slots.sort_by_key(|s| s.last_used);
        let resident: Vec<ResidentStatus> = slots
            .iter()
            .map(|s| {
                let t = &cfg.tiers[s.tier];
                ResidentStatus {
                    tier: t.name.clone(),
                    model: t.model.display().to_string(),
                    estimated_bytes: t.cost.total,
                    in_use: s.leases,
                    load_ms: s.load_ms,
                    rss_after_load: s.rss_after_load,
                    idle_ms: s.last_used_at.elapsed().as_secs_f64() * 1e3,
                }
            })
            .collect();
        PoolStatus {
            budget: cfg.memory.budget.0,
            reserve: cfg.memory.reserve.0,
            model_allowance: cfg.memory.model_allowance(),
            max_loaded: cfg.memory.max_loaded,
            estimated_bytes: resident.iter().map(|r| r.estimated_bytes).sum(),
            resident,
            process_rss: process_rss(),
            counters: cfg
                .tiers
                .iter()
                .map(|t| t.name.clone())
                .zip(st.counters.iter().cloned())
                .collect(),
        }
    }
}
