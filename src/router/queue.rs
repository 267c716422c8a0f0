//! The inference queue: one request is answered at a time (llama.cpp runs
//! on one thread), up to `depth` more wait, and one more is refused at once
//! with [`Busy`].
//!
//! When the running request ends, the next one is chosen by [`pick`]: the
//! oldest waiting request whose tier is already resident goes first, so
//! agents that alternate tiers do not make the pool load and evict a model
//! for every request; but a request overtaken `max_bypass` times goes next
//! whatever it needs, so nobody starves.

use std::collections::VecDeque;
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
    running: bool,
    waiting: VecDeque<Waiter>,
    next_id: u64,
    rejected: u64,
}

/// The queue. Admission order is decided when a slot frees, with the
/// resident tiers as they are at that moment.
pub struct Scheduler {
    depth: usize,
    max_bypass: u32,
    /// A std mutex: held for bookkeeping only, never across `.await`.
    state: Mutex<State>,
}

/// The right to run; the next request is admitted when it drops.
pub struct Ticket<'a> {
    scheduler: &'a Scheduler,
    resident: &'a (dyn Fn() -> Vec<usize> + Sync),
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        self.scheduler.release((self.resident)());
    }
}

/// Removes a waiter that gave up (its future was dropped) from the line.
struct Leave<'a> {
    scheduler: &'a Scheduler,
    id: u64,
    resident: &'a (dyn Fn() -> Vec<usize> + Sync),
    admitted: bool,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        if self.admitted {
            return;
        }
        let mut st = self.scheduler.state.lock().unwrap();
        if let Some(i) = st.waiting.iter().position(|w| w.id == self.id) {
            st.waiting.remove(i);
        } else {
            // Woken, but gone before taking the slot: pass it on.
            drop(st);
            self.scheduler.release((self.resident)());
        }
    }
}

impl Scheduler {
    pub fn new(depth: usize, max_bypass: u32) -> Self {
        Scheduler {
            depth,
            max_bypass,
            state: Mutex::new(State::default()),
        }
    }

    /// Waits for the right to run a request that starts at `tier`.
    /// `resident` lists the resident tiers when a slot frees.
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
        let id = {
            let mut st = self.state.lock().unwrap();
            if !st.running {
                st.running = true;
                return Ok(Ticket {
                    scheduler: self,
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
            id
        };
        let mut leave = Leave {
            scheduler: self,
            id,
            resident,
            admitted: false,
        };
        // The sender is only dropped after sending or with the scheduler.
        let _ = woken.await;
        leave.admitted = true;
        Ok(Ticket {
            scheduler: self,
            resident,
        })
    }

    /// Hands the slot to the next waiter, or marks it free.
    fn release(&self, resident: Vec<usize>) {
        let mut st = self.state.lock().unwrap();
        loop {
            if st.waiting.is_empty() {
                st.running = false;
                return;
            }
            let line: Vec<Waiting> = st.waiting.iter().map(|w| w.info).collect();
            let i = pick(&line, &resident, self.max_bypass);
            for w in st.waiting.iter_mut().take(i) {
                w.info.bypassed += 1;
            }
            let next = st.waiting.remove(i).expect("index from pick");
            if next.wake.send(()).is_ok() {
                return; // still running, now on the waiter's behalf
            }
        }
    }

    /// Requests waiting now.
    pub fn queued(&self) -> usize {
        self.state.lock().unwrap().waiting.len()
    }

    /// Whether a request is being answered now.
    pub fn running(&self) -> bool {
        self.state.lock().unwrap().running
    }

    /// Requests refused with [`Busy`] so far.
    pub fn rejected(&self) -> u64 {
        self.state.lock().unwrap().rejected
    }

    pub fn depth(&self) -> usize {
        self.depth
    }

    /// Waits until nothing runs or waits, at most `within` (shutdown's
    /// drain); true if the queue went idle.
    pub async fn wait_idle(&self, within: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + within;
        loop {
            {
                let st = self.state.lock().unwrap();
                if !st.running && st.waiting.is_empty() {
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
        let s = Scheduler::new(1, 4);
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
        let s = Scheduler::new(1, 4);
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
        let s = Arc::new(Scheduler::new(8, 1));
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
}
