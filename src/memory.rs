//! Memory, measured and estimated: this process's resident set size, and
//! the one view of the pool's memory every report shows.

use crate::pool::PoolStatus;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

/// Resident set size of this process in bytes (0 where it cannot be read).
pub fn process_rss() -> u64 {
    let pid = Pid::from_u32(std::process::id());
    let Ok(mut sys) = System::new() else {
        return 0;
    };
    sys.refresh_processes_specifics(
        ProcessesToUpdate::Some(&[pid]),
        true,
        ProcessRefreshKind::nothing().with_memory(),
    );
    sys.process(pid).map_or(0, |p| p.memory())
}

/// The machine's total and available memory in bytes ((0, 0) where they
/// cannot be read).
pub fn system_memory() -> (u64, u64) {
    System::new()
        .map(|mut sys| {
            sys.refresh_memory();
            (sys.total_memory(), sys.available_memory())
        })
        .unwrap_or((0, 0))
}

/// The memory picture in route results, get_tier_status and `ask`: the
/// budget, what the resident models are estimated to use, and what the
/// process and the machine measure.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct MemoryView {
    pub budget: u64,
    pub reserve: u64,
    /// budget - reserve: what the models may use.
    pub model_allowance: u64,
    pub max_loaded: usize,
    /// Sum of the estimates of the resident models.
    pub estimated_in_use: u64,
    /// This process's resident set size, measured now.
    pub process_rss: u64,
    pub system_total: u64,
    pub system_available: u64,
    /// Resident tiers, least recently used first.
    pub loaded: Vec<String>,
}

impl MemoryView {
    /// The view of `pool` now, with the machine's memory read alongside.
    pub fn of(pool: &PoolStatus) -> Self {
        let (system_total, system_available) = system_memory();
        MemoryView {
            budget: pool.budget,
            reserve: pool.reserve,
            model_allowance: pool.model_allowance,
            max_loaded: pool.max_loaded,
            estimated_in_use: pool.estimated_bytes,
            process_rss: pool.process_rss,
            system_total,
            system_available,
            loaded: pool.resident.iter().map(|r| r.tier.clone()).collect(),
        }
    }
}
