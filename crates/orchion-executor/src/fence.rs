//! The fence: a small process beside each task's process group that kills the group when the
//! agent can no longer vouch for its lease. The agent (through [`crate::run_command`]) writes
//! to the fence's stdin how long the attempt may still run, each time it renews a lease or
//! hears a heartbeat answered; the fence kills the group with SIGKILL when that time is up
//! without a newer word, or at once when its stdin closes (the agent died: SIGKILL, a crash).
//! It lives in its own process and process group, so an agent that is stopped (SIGSTOP) or
//! killed cannot take it along: the task never outlives its lease, whatever becomes of the
//! agent. `done` ends it without killing anything.
//!
//! It is the `orchion` binary itself, run as `orchion __fence <group>`.

use std::{
    io::BufRead,
    process::ExitCode,
    sync::mpsc,
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};

/// The hidden subcommand that runs a fence.
pub const FENCE_COMMAND: &str = "__fence";

/// Runs the fence of process group `group` until the task ends; the process's `main`.
pub fn watch(group: i32) -> ExitCode {
    let (lines, heard) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { return };
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let mut deadline: Option<Instant> = None;
    loop {
        let line = match deadline {
            Some(at) => match heard.recv_timeout(at.saturating_duration_since(Instant::now())) {
                Ok(line) => Some(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    kill(group, "its lease could not be renewed in time");
                    return ExitCode::SUCCESS;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => None,
            },
            None => heard.recv().ok(),
        };
        match line.as_deref().map(str::trim) {
            Some("done") => return ExitCode::SUCCESS,
            Some(left) => {
                if let Ok(ms) = left.parse::<u64>() {
                    deadline = Some(Instant::now() + Duration::from_millis(ms));
                }
            }
            None => {
                kill(group, "its agent is gone");
                return ExitCode::SUCCESS;
            }
        }
    }
}

fn kill(group: i32, why: &str) {
    if nix::sys::signal::killpg(Pid::from_raw(group), Signal::SIGKILL).is_ok() {
        eprintln!("orchion fence: killed process group {group}: {why}");
    }
}
