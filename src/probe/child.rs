//! Runs one probe child: spawns it, waits for it up to a deadline, and
//! turns how it ended into facts or a cause.

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Most bytes of the child's stderr kept (its tail).
const STDERR_TAIL: usize = 64 << 10;

/// How a child ended.
#[derive(Debug)]
pub struct Ended {
    /// None when it ran past the deadline and was killed.
    pub status: Option<ExitStatus>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub elapsed: Duration,
}

/// Runs `cmd` with no stdin, killing it at `timeout`.
///
/// # Errors
///
/// The child could not be started.
pub fn run(mut cmd: Command, timeout: Duration) -> std::io::Result<Ended> {
    let started = Instant::now();
    // Its own process group, so a timeout kills whatever it started too
    // (a grandchild holding the pipes open would keep us waiting).
    let mut child = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Both pipes are drained on their own threads, so a chatty child never
    // blocks on a full pipe while we wait for it.
    let out = drain(child.stdout.take(), usize::MAX);
    let err = drain(child.stderr.take(), STDERR_TAIL);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if started.elapsed() >= timeout {
            kill_group(child.id());
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(Ended {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        elapsed: started.elapsed(),
    })
}

/// SIGKILL to the process group `pgid` (the child's, see `run`).
fn kill_group(pgid: u32) {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return;
    };
    // SAFETY: kill(2) with a negative pid signals that process group; it
    // touches no memory of ours. The group is the child's own (we made it
    // with process_group(0) and have not reaped the child yet, so the id
    // cannot have been reused).
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

fn drain(
    pipe: Option<impl Read + Send + 'static>,
    keep: usize,
) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let Some(mut pipe) = pipe else {
            return kept;
        };
        let mut buf = [0u8; 8192];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            kept.extend_from_slice(&buf[..n]);
            if kept.len() > keep {
                kept.drain(..kept.len() - keep);
            }
        }
        kept
    })
}

impl Ended {
    /// Why the child failed, in one line: how it ended and its last
    /// stderr line (an assert's message, llama.cpp's error). None when it
    /// exited cleanly.
    pub fn failure(&self, timeout: Duration) -> Option<String> {
        let how = match self.status {
            None => format!("the probe ran past its {} s timeout", timeout.as_secs()),
            Some(s) if s.success() => return None,
            Some(s) => match s.signal() {
                Some(sig) => format!("the probe was killed by {}", signal_name(sig)),
                None => format!("the probe exited with status {}", s.code().unwrap_or(-1)),
            },
        };
        let mut cause = match last_line(&self.stderr) {
            Some(line) => format!("{how}: {line}"),
            None => how,
        };
        // llama.cpp logs why it refused a file before our error line
        // ("could not load ... see the log"): the log is the child's.
        if let Some(said) = llama_error(&self.stderr).filter(|e| !cause.contains(e.as_str())) {
            cause.push_str(&format!(" (llama.cpp: {said})"));
        }
        Some(cause)
    }
}

/// The first error llama.cpp logged, as our log format writes it
/// (`... ERROR llama-cpp-2: <message> module="..."`).
fn llama_error(text: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(text);
    let line = text
        .lines()
        .find_map(|l| l.split_once(" ERROR llama-cpp-2: "))?
        .1;
    let message = line.rsplit_once(" module=").map_or(line, |(m, _)| m);
    Some(message.trim().to_string())
}

/// The last non-empty line of `text`, without our error prefix.
pub fn last_line(text: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(text);
    let line = text.lines().map(str::trim).rfind(|l| !l.is_empty())?;
    let line = line.strip_prefix("error: ").unwrap_or(line);
    // An assert names its source file by its build path: keep it from
    // llama.cpp's own folder on.
    let line = match line.find("/llama.cpp/") {
        Some(at) if line[..at].starts_with('/') && !line[..at].contains(' ') => &line[at + 1..],
        _ => line,
    };
    Some(line.to_string())
}

fn signal_name(sig: i32) -> String {
    let name = match sig {
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        15 => "SIGTERM",
        _ => return format!("signal {sig}"),
    };
    format!("{name} (signal {sig})")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("sh");
        c.arg("-c").arg(script);
        c
    }

    #[test]
    fn an_abort_names_the_signal_and_the_last_stderr_line() {
        let t = Duration::from_secs(10);
        let ended = run(
            sh("echo loading >&2; echo '/b/x/llama.cpp/src/x.cpp:1: GGML_ASSERT(a) failed' >&2; kill -ABRT $$"),
            t,
        )
        .unwrap();
        let why = ended.failure(t).unwrap();
        assert!(
            why.contains("SIGABRT")
                && why.ends_with(": llama.cpp/src/x.cpp:1: GGML_ASSERT(a) failed"),
            "{why}"
        );
    }

    #[test]
    fn llama_cpps_own_error_joins_our_last_line() {
        let t = Duration::from_secs(10);
        let script = "echo '2026-12-03T01:17:43Z ERROR llama-cpp-2: error loading model: tensor x not found module=\"llama.cpp::load\"' >&2; \
                      echo 'error: llama.cpp could not load m.gguf (see the log)' >&2; exit 1";
        let why = run(sh(script), t).unwrap().failure(t).unwrap();
        assert_eq!(
            why,
            "the probe exited with status 1: llama.cpp could not load m.gguf (see the log) \
             (llama.cpp: error loading model: tensor x not found)"
        );
    }

    #[test]
    fn a_hung_child_is_killed_at_the_deadline() {
        let t = Duration::from_millis(300);
        let ended = run(sh("sleep 30"), t).unwrap();
        assert!(ended.elapsed < Duration::from_secs(5));
        assert!(ended.failure(t).unwrap().contains("timeout"));
    }

    #[test]
    fn a_clean_exit_keeps_stdout_and_an_error_exit_its_message() {
        let t = Duration::from_secs(10);
        let ok = run(sh("echo '{\"a\":1}'"), t).unwrap();
        assert!(ok.failure(t).is_none());
        assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "{\"a\":1}");
        let bad = run(sh("echo 'error: no such tensor' >&2; exit 1"), t).unwrap();
        assert_eq!(
            bad.failure(t).unwrap(),
            "the probe exited with status 1: no such tensor"
        );
    }
}
