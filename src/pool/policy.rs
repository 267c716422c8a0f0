//! Residency decisions as plain functions: which resident models to evict so
//! that a new one fits the byte budget and the residency limit.

/// A resident model as the policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResidentView {
    pub tier: usize,
    pub cost: u64,
    /// Requests using it now; a model in use is never evicted.
    pub in_use: bool,
    /// Logical clock of its last use: smaller is older.
    pub last_used: u64,
}

/// The outcome of planning an admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Evict these tiers (least recently used first), then load.
    Evict(Vec<usize>),
    /// It would fit, but only by evicting models that are in use now: wait
    /// for a request to finish and plan again.
    WaitForIdle,
    /// It can never fit: its cost alone exceeds the allowance (or the
    /// residency limit is zero).
    TooLarge,
}

/// Plans room for a model of `cost` bytes among `resident`, keeping at most
/// `max_loaded` models and at most `allowance` bytes. Models in `protect`
/// (besides those in use) are not evicted either.
pub fn plan_admission(
    resident: &[ResidentView],
    cost: u64,
    allowance: u64,
    max_loaded: usize,
    protect: &[usize],
) -> Admission {
    if cost > allowance || max_loaded == 0 {
        return Admission::TooLarge;
    }
    let mut count = resident.len();
    let mut used: u64 = resident.iter().map(|r| r.cost).sum();
    let fits = |count: usize, used: u64| count < max_loaded && used + cost <= allowance;
    if fits(count, used) {
        return Admission::Evict(Vec::new());
    }
    let mut idle: Vec<&ResidentView> = resident
        .iter()
        .filter(|r| !r.in_use && !protect.contains(&r.tier))
        .collect();
    idle.sort_by_key(|r| r.last_used);
    let mut evict = Vec::new();
    for r in idle {
        evict.push(r.tier);
        count -= 1;
        used -= r.cost;
        if fits(count, used) {
            return Admission::Evict(evict);
        }
    }
    Admission::WaitForIdle
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(tier: usize, cost: u64, in_use: bool, last_used: u64) -> ResidentView {
        ResidentView {
            tier,
            cost,
            in_use,
            last_used,
        }
    }

    #[test]
    fn fits_without_eviction() {
        assert_eq!(
            plan_admission(&[r(0, 10, false, 1)], 10, 100, 2, &[]),
            Admission::Evict(vec![])
        );
    }

    #[test]
    fn evicts_least_recently_used_idle_first() {
        let res = [r(0, 10, false, 5), r(1, 10, false, 2)];
        assert_eq!(
            plan_admission(&res, 10, 100, 2, &[]),
            Admission::Evict(vec![1])
        );
    }

    #[test]
    fn never_evicts_a_model_in_use() {
        let res = [r(0, 10, true, 1), r(1, 10, false, 9)];
        assert_eq!(
            plan_admission(&res, 10, 100, 2, &[]),
            Admission::Evict(vec![1])
        );
        let busy = [r(0, 10, true, 1), r(1, 10, true, 9)];
        assert_eq!(
            plan_admission(&busy, 10, 100, 2, &[]),
            Admission::WaitForIdle
        );
    }

    #[test]
    fn evicts_by_bytes_not_only_by_count() {
        // Room for 3 models by count, but 60 + 50 > 100 bytes.
        let res = [r(0, 30, false, 1), r(1, 30, false, 2)];
        assert_eq!(
            plan_admission(&res, 50, 100, 3, &[]),
            Admission::Evict(vec![0])
        );
    }

    #[test]
    fn too_large_alone_is_reported() {
        assert_eq!(plan_admission(&[], 101, 100, 2, &[]), Admission::TooLarge);
        assert_eq!(plan_admission(&[], 1, 100, 0, &[]), Admission::TooLarge);
    }

    #[test]
    fn protected_models_stay() {
        let res = [r(0, 10, false, 1), r(1, 10, false, 2)];
        assert_eq!(
            plan_admission(&res, 10, 100, 2, &[0]),
            Admission::Evict(vec![1])
        );
        assert_eq!(
            plan_admission(&res, 10, 100, 2, &[0, 1]),
            Admission::WaitForIdle
        );
    }
}
