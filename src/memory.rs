//! Measured memory: this process's resident set size, via sysinfo.

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
