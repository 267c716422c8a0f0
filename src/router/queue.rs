//! The inference queue: up to `max_batch` requests run at once on each
//! resident tier (the engine decodes them together), up to `depth` more
//! wait, and one more is refused at once with [`Busy`].
//!
//! With `max_batch` 1, one request runs at a time, whatever its tier. With
//! more, a request may start while others run if its tier has a free place
//! and is resident (or already running): a request for another tier waits
//! until the running ones finish, so requests do not make the pool swap
//! models under each other.
//!
//! When a place frees, the next request is chosen by [`pick`] among those
//! that may start: the oldest waiting request whose tier is already
//! resident goes first, so agents that alternate tiers do not make the pool
//! load and evict a model for every request; but a request overtaken
//! `max_bypass` times goes next whatever it needs (and nobody starts
//! before it), so nobody starves.
//!
//! A cascade keeps its place as it climbs: its [`Ticket`] moves to the
//! next tier without waiting again ([`Ticket::move_to`]).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use tokio::sync::oneshot;

/// Too many requests waiting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("server busy: {queued} requests are queued and the queue holds {depth} (server.queue_depth); retry shortly")]
pub struct Busy {
    pub queued: usize,
    pub depth: usize,
}

/// A waiting request, as [`pick`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waiting {
    pub tier: usize,
    /// Times a later request went first.
    pub bypassed: u32,
}

/// Index of the waiting request to run next (`waiting` is in arrival
/// order, non-empty): the oldest one that has been overtaken `max_bypass`
/// times, else the oldest whose tier is resident, else the oldest.
pub fn pick(waiting: &[Waiting], resident: &[usize], max_bypass: u32) -> usize {
    if let Some(i) = waiting.iter().position(|w| w.bypassed >= max_bypass) {
        return i;
    }
    waiting
        .iter()
        .position(|w| resident.contains(&w.tier))
        .unwrap_or(0)
}

struct Waiter {
    id: u64,
    info: Waiting,
    wake: oneshot::Sender<()>,
}

#[derive(Default)]
struct State {
    /// Requests running, per tier.
    running: BTreeMap<usize, usize>,
    waiting: VecDeque<Waiter>,
    next_id: u64,
    rejected: u64,
}

impl State {
    fn total(&self) -> usize {
        self.running.values().sum()
    }

    fn add(&mut self, tier: usize) {
        *self.running.entry(tier).or_default() += 1;
    }

    fn remove(&mut self, tier: usize) {
        if let Some(n) = self.running.get_mut(&tier) {
            *n -= 1;
            if *n == 0 {
                self.running.remove(&tier);
            }
        }
    }
}

/// The queue. Admission order is decided when a place frees, with the
/// resident tiers as they are at that moment.
pub struct Scheduler {
    depth: usize,
    max_bypass: u32,
    max_batch: usize,
    /// A std mutex: held for bookkeeping only, never across `.await`.
    state: Mutex<State>,
}

/// The right to run on a tier; the next request is admitted when it drops.
pub struct Ticket<'a> {
    scheduler: &'a Scheduler,
    tier: usize,
    resident: &'a (dyn Fn() -> Vec<usize> + Sync),
}

impl Ticket<'_> {
    /// The tier this ticket runs on.
    pub fn tier(&self) -> usize {
        self.tier
    }

    /// Moves this running request to `tier` (a cascade's next attempt)
    /// without queueing again; its place on the old tier goes to the next
    /// request that may take it.
    pub fn move_to(&mut self, tier: usize) {
        if tier == self.tier {
            return;
        }
        // The resident tiers are read before the lock is taken (the pool
        // has a lock of its own).
        let resident = (self.resident)();
        let mut st = self.scheduler.state.lock().unwrap();
        st.remove(self.tier);
        st.add(tier);
        self.tier = tier;
        self.scheduler.dispatch(&mut st, &resident);
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        let resident = (self.resident)();
        let mut st = self.scheduler.state.lock().unwrap();
        st.remove(self.tier);
        self.scheduler.dispatch(&mut st, &resident);
    }
}

/// Removes a waiter that gave up (its future was dropped) from the line.
struct Leave<'a> {
    scheduler: &'a Scheduler,
    id: u64,
    tier: usize,
    resident: &'a (dyn Fn() -> Vec<usize> + Sync),
    admitted: bool,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        if self.admitted {
            return;
        }
        let resident = (self.resident)();
        let mut st = self.scheduler.state.lock().unwrap();
        if let Some(i) = st.waiting.iter().position(|w| w.id == self.id) {
            st.waiting.remove(i);
        } else {
            // Admitted, but gone before taking the place: pass it on.
            st.remove(self.tier);
        }
        self.scheduler.dispatch(&mut st, &resident);
    }
}

impl Scheduler {
    /// A queue of `depth` waiting requests over `max_batch` running ones
    /// per tier (at least 1).
    pub fn new(depth: usize, max_bypass: u32, max_batch: usize) -> Self {
        Scheduler {
            depth,
            max_bypass,
            max_batch: max_batch.max(1),
            state: Mutex::new(State::default()),
        }
    }

    /// Whether a request for `tier` may start now.
    fn may_start(&self, st: &State, tier: usize, resident: &[usize]) -> bool {
        let total = st.total();
        if total == 0 {
            return true;
        }
        if self.max_batch == 1 {
            return false;
        }
        let here = st.running.get(&tier).copied().unwrap_or(0);
        here < self.max_batch && (here > 0 || resident.contains(&tier))
    }

    /// Starts every waiting request that may start, in [`pick`]'s order; a
    /// request overtaken `max_bypass` times that may not start yet holds
    /// the others back until it can.
    fn dispatch(&self, st: &mut State, resident: &[usize]) {
        loop {
            if st.waiting.is_empty() {
                return;
            }
            let line: Vec<Waiting> = st.waiting.iter().map(|w| w.info).collect();
            let starved = line.iter().position(|w| w.bypassed >= self.max_bypass);
            let i = match starved {
                Some(i) if self.may_start(st, line[i].tier, resident) => i,
                Some(_) => return,
                None => {
                    let open: Vec<usize> = (0..line.len())
                        .filter(|&i| self.may_start(st, line[i].tier, resident))
                        .collect();
                    if open.is_empty() {
                        return;
                    }
                    let candidates: Vec<Waiting> = open.iter().map(|&i| line[i]).collect();
                    open[pick(&candidates, resident, self.max_bypass)]
                }
            };
            for w in st.waiting.iter_mut().take(i) {
                w.info.bypassed += 1;
            }
            let next = st.waiting.remove(i).expect("index from the line");
            st.add(next.info.tier);
            if next.wake.send(()).is_err() {
                // Gone already (its Leave found it admitted): free the place.
                st.remove(next.info.tier);
            }
        }
    }

    /// Waits for the right to run a request that starts at `tier`.
    /// `resident` lists the resident tiers when a place frees.
    ///
    /// # Errors
    ///
    /// [`Busy`] at once when `depth` requests are already waiting.
    pub async fn admit<'a>(
        &'a self,
        tier: usize,
        resident: &'a (dyn Fn() -> Vec<usize> + Sync),
    ) -> Result<Ticket<'a>, Busy> {
        let (wake, woken) = oneshot::channel();
        let now_resident = resident();
        let id = {
            let mut st = self.state.lock().unwrap();
            if st.waiting.is_empty() && self.may_start(&st, tier, &now_resident) {
                st.add(tier);
                return Ok(Ticket {
                    scheduler: self,
                    tier,
                    resident,
                });
            }
            if st.waiting.len() >= self.depth {
                st.rejected += 1;
                return Err(Busy {
                    queued: st.waiting.len(),
                    depth: self.depth,
                });
            }
            st.next_id += 1;
            let id = st.next_id;
            st.waiting.push_back(Waiter {
                id,
                info: Waiting { tier, bypassed: 0 },
                wake,
            });
            self.dispatch(&mut st, &now_resident);
            id
        };
        let mut leave = Leave {
            scheduler: self,
            id,
            tier,
            resident,
            admitted: false,
        };
        // The sender is only dropped after sending or with the scheduler.
        let _ = woken.await;
        leave.admitted = true;
        Ok(Ticket {
            scheduler: self,
            tier,
            resident,
        })
    }

    /// Requests waiting now.
    pub fn queued(&self) -> usize {
        self.state.lock().unwrap().waiting.len()
    }

    /// Whether a request is being answered now.
    pub fn running(&self) -> bool {
        self.running_total() > 0
    }

    /// Requests being answered now.
    pub fn running_total(&self) -> usize {
        self.state.lock().unwrap().total()
    }

    /// Requests being answered now on `tier`.
    pub fn running_on(&self, tier: usize) -> usize {
        let st = self.state.lock().unwrap();
        st.running.get(&tier).copied().unwrap_or(0)
    }

    /// Requests refused with [`Busy`] so far.
    pub fn rejected(&self) -> u64 {
        self.state.lock().unwrap().rejected
    }

    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Requests that may run at once on one tier (`server.max_batch`).
    pub fn max_batch(&self) -> usize {
        self.max_batch
    }

    /// Waits until nothing runs or waits, at most `within` (shutdown's
    /// drain); true if the queue went idle.
    pub async fn wait_idle(&self, within: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        loop {
            {
                let st = self.state.lock().unwrap();
                if st.total() == 0 && st.waiting.is_empty() {
                    return true;
                }
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn w(tier: usize, bypassed: u32) -> Waiting {
        Waiting { tier, bypassed }
    }

    #[test]
    fn pick_prefers_resident_then_oldest_and_caps_bypass() {
        // Nothing resident: arrival order.
        assert_eq!(pick(&[w(2, 0), w(0, 0)], &[], 4), 0);
        // Tier 0 resident: the later request for it goes first.
        assert_eq!(pick(&[w(2, 0), w(0, 0), w(0, 0)], &[0], 4), 1);
        // The oldest was overtaken enough: it goes now.
        assert_eq!(pick(&[w(2, 4), w(0, 0)], &[0], 4), 0);
        // max_bypass 0 is strict FIFO.
        assert_eq!(pick(&[w(2, 0), w(0, 0)], &[0], 0), 0);
        // Several resident: the oldest of them.
        assert_eq!(pick(&[w(3, 0), w(1, 0), w(0, 0)], &[0, 1], 4), 1);
    }

    fn none() -> Vec<usize> {
        Vec::new()
    }

    #[tokio::test]
    async fn refuses_beyond_depth_at_once() {
        let s = Scheduler::new(1, 4, 1);
        let running = s.admit(0, &none).await.unwrap();
        let waiting = s.admit(0, &none);
        let mut waiting = Box::pin(waiting);
        // Poll once so it joins the line.
        assert!(futures_poll(&mut waiting).await.is_none());
        assert_eq!(s.queued(), 1);
        let busy = s.admit(0, &none).await.err().unwrap();
        assert_eq!(
            busy,
            Busy {
                queued: 1,
                depth: 1
            }
        );
        assert!(busy.to_string().contains("1 requests are queued"));
        assert_eq!(s.rejected(), 1);
        drop(running);
        let t = waiting.await.unwrap();
        assert_eq!(s.queued(), 0);
        drop(t);
        assert!(!s.running());
    }

    async fn futures_poll<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
        tokio::select! {
            biased;
            out = f => Some(out),
            _ = tokio::task::yield_now() => None,
        }
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_frees_its_place() {
        let s = Scheduler::new(1, 4, 1);
        let running = s.admit(0, &none).await.unwrap();
        {
            let mut gone = Box::pin(s.admit(0, &none));
            assert!(futures_poll(&mut gone).await.is_none());
            assert_eq!(s.queued(), 1);
        }
        assert_eq!(s.queued(), 0);
        // Its place is free for another.
        let mut next = Box::pin(s.admit(0, &none));
        assert!(futures_poll(&mut next).await.is_none());
        drop(running);
        drop(next.await.unwrap());
        assert!(!s.running());
    }

    #[tokio::test]
    async fn resident_tier_overtakes_but_not_forever() {
        let s = Arc::new(Scheduler::new(8, 1, 1));
        let order = Arc::new(Mutex::new(Vec::new()));
        let resident = || vec![0usize];
        let first = s.admit(0, &resident).await.unwrap();
        let mut tasks = Vec::new();
        // Arrival order: tier 2, tier 0, tier 0.
        for (n, tier) in [(1, 2usize), (2, 0), (3, 0)] {
            let s = s.clone();
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                let resident = || vec![0usize];
                let t = s.admit(tier, &resident).await.unwrap();
                order.lock().unwrap().push(n);
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(t);
            }));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        // Request 2 (resident) overtakes 1 once; then 1 has reached
        // max_bypass and goes before 3.
        assert_eq!(*order.lock().unwrap(), vec![2, 1, 3]);
    }

    #[tokio::test]
    async fn with_max_batch_several_run_on_a_resident_tier_and_busy_counts_the_waiting() {
        let s = Scheduler::new(1, 4, 2);
        let resident = || vec![0usize];
        let a = s.admit(0, &resident).await.unwrap();
        let b = s.admit(0, &resident).await.unwrap();
        assert_eq!((s.running_on(0), s.running_total(), s.queued()), (2, 2, 0));
        // Tier 0 is full: the third waits, the fourth is refused.
        let mut third = Box::pin(s.admit(0, &resident));
        assert!(futures_poll(&mut third).await.is_none());
        assert_eq!(s.queued(), 1);
        let busy = s.admit(0, &resident).await.err().unwrap();
        assert_eq!(busy.queued, 1);
        drop(a);
        let c = third.await.unwrap();
        assert_eq!((s.running_on(0), s.queued()), (2, 0));
        drop((b, c));
        assert!(!s.running());
    }

    #[tokio::test]
    async fn a_tier_that_is_not_resident_waits_for_the_running_ones() {
        let s = Scheduler::new(4, 4, 4);
        let resident = || vec![0usize];
        let a = s.admit(0, &resident).await.unwrap();
        let mut other = Box::pin(s.admit(1, &resident));
        assert!(
            futures_poll(&mut other).await.is_none(),
            "tier 1 would load"
        );
        // A request for the running tier still starts (it is not starved
        // out yet: max_bypass is 4).
        let b = s.admit(0, &resident).await.unwrap();
        drop(a);
        assert!(futures_poll(&mut other).await.is_none());
        drop(b);
        let t = other.await.unwrap();
        assert_eq!((t.tier(), s.running_on(1)), (1, 1));
    }

    #[tokio::test]
    async fn a_climbing_cascade_moves_its_place_and_frees_the_old_one() {
        let s = Scheduler::new(4, 4, 1);
        let resident = || vec![0usize, 1];
        let mut climbing = s.admit(0, &resident).await.unwrap();
        let mut waiting = Box::pin(s.admit(0, &resident));
        assert!(futures_poll(&mut waiting).await.is_none());
        // With max_batch 1 one request runs at a time, whatever its tier.
        climbing.move_to(1);
        assert_eq!((s.running_on(0), s.running_on(1)), (0, 1));
        assert!(futures_poll(&mut waiting).await.is_none());
        drop(climbing);
        let next = waiting.await.unwrap();
        assert_eq!((next.tier(), s.running_total()), (0, 1));
    }

    #[tokio::test]
    async fn a_starved_request_holds_the_others_back_until_it_can_start() {
        let s = Scheduler::new(8, 1, 4);
        let resident = || vec![0usize];
        let a = s.admit(0, &resident).await.unwrap();
        let mut starved = Box::pin(s.admit(1, &resident));
        assert!(futures_poll(&mut starved).await.is_none());
        // A request for the running tier overtakes it, once (max_bypass 1).
        let b = s.admit(0, &resident).await.unwrap();
        // Now nothing overtakes it, even where there is room.
        let mut blocked = Box::pin(s.admit(0, &resident));
        assert!(futures_poll(&mut blocked).await.is_none());
        drop(a);
        assert!(futures_poll(&mut starved).await.is_none());
        assert!(futures_poll(&mut blocked).await.is_none());
        drop(b);
        let t1 = starved.await.unwrap();
        assert_eq!(t1.tier(), 1);
        // Then the resident tier's request starts beside it.
        let t0 = blocked.await.unwrap();
        assert_eq!((t0.tier(), s.running_total()), (0, 2));
    }
}
