//! The double-forked helper processes of a test's own process (cni-core's link deletion and
//! nf_tables close): adopting them, seeing them, reaping them.

use std::time::{Duration, Instant};

/// Makes this process the reaper of its orphans, so that a helper (a grandchild) is reaped here
/// and its exit status seen.
pub fn adopt_orphans() {
    // SAFETY: prctl with integer arguments only.
    assert_eq!(
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) },
        0
    );
}

/// This process's children, with their state letter (`Z` for a zombie).
pub fn children() -> Vec<(String, char)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let children = std::fs::read_to_string(task.unwrap().path().join("children")).unwrap();
        for pid in children.split_whitespace() {
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                let state = stat.rsplit(") ").next().unwrap_or("").chars().next();
                out.push((pid.to_string(), state.unwrap_or('?')));
            }
        }
    }
    out
}

/// Reaps children until none is left, each of which must exit with 0 within `within`; how many.
pub fn reap_all(within: Duration) -> usize {
    let deadline = Instant::now() + within;
    let mut reaped = 0;
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into the integer it is given.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid > 0 {
            assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "status {status}"
            );
            reaped += 1;
        } else if pid < 0 {
            return reaped; // ECHILD: nothing left
        } else {
            assert!(Instant::now() < deadline, "a helper is still running");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
