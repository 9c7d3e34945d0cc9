//! Zombie reaping: PID 1 inherits every orphan and must collect its exit status.
//!
//! The agent itself spawns no processes as PID 1 (no shell, no busybox). If it ever does,
//! note that [`reap`] collects any child, so waiting on a specific child must go through
//! the status [`reap`] returns rather than `Child::wait`.
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};

/// Collects every child that has exited, without blocking. Returns what was collected.
pub fn reap() -> Vec<WaitStatus> {
    let mut reaped = Vec::new();
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG | WaitPidFlag::__WALL)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return reaped,
            Ok(status) => reaped.push(status),
        }
    }
}

/// Reaps on every SIGCHLD until the runtime stops. Spawn it on the agent's runtime.
pub async fn reap_forever() {
    let mut sigchld = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot watch SIGCHLD, zombies will pile up: {e}");
            return;
        }
    };
    loop {
        // Signals coalesce: one SIGCHLD may stand for many children, so reap them all.
        for status in reap() {
            tracing::debug!(?status, "reaped");
        }
        if sigchld.recv().await.is_none() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reaps_an_exited_child() {
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut seen = Vec::new();
        while !seen.iter().any(|s: &WaitStatus| s.pid() == Some(pid)) {
            assert!(
                std::time::Instant::now() < deadline,
                "never reaped: {seen:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
            seen.extend(reap());
        }
        assert!(seen.contains(&WaitStatus::Exited(pid, 0)), "{seen:?}");
        // Nothing left: no block, no error.
        drop(child);
        assert!(reap().iter().all(|s| s.pid() != Some(pid)));
    }
}
