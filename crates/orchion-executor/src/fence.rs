//! The fence: one small process beside an agent that kills its commands' process groups when
//! the agent can no longer vouch for their leases. The agent writes to the fence's stdin, for
//! each running command, how long it may still run (`<group> <ms>`), again each time it renews
//! a lease or hears a heartbeat answered, and `<group> done` when the command ends. The fence
//! kills a group with SIGKILL when its time is up without a newer word, and every group it
//! knows at once when its stdin closes (the agent died: SIGKILL, a crash). It lives in its own
//! process and process group, so an agent that is stopped (SIGSTOP) or killed cannot take it
//! along: no command outlives its lease, whatever becomes of the agent.
//!
//! It is the `orchion` binary itself, run as `orchion __fence`, started once per agent process
//! on the first command (and again should it ever exit).

use std::{
    collections::HashMap,
    io::BufRead,
    process::{ExitCode, Stdio},
    sync::{Mutex, mpsc},
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};
use tokio::{io::AsyncWriteExt, sync::mpsc as async_mpsc};

/// The hidden subcommand that runs the fence.
pub const FENCE_COMMAND: &str = "__fence";

/// Runs the fence until its stdin closes; the process's `main`.
pub fn watch() -> ExitCode {
    let (lines, heard) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { return };
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    let mut deadlines: HashMap<i32, Instant> = HashMap::new();
    loop {
        let next = deadlines.values().min().copied();
        let line = match next {
            Some(at) => match heard.recv_timeout(at.saturating_duration_since(Instant::now())) {
                Ok(line) => Some(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let now = Instant::now();
                    deadlines.retain(|group, at| {
                        let due = *at <= now;
                        if due {
                            kill(*group, "its lease could not be renewed in time");
                        }
                        !due
                    });
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => None,
            },
            None => heard.recv().ok(),
        };
        let Some(line) = line else {
            for group in deadlines.keys() {
                kill(*group, "its agent is gone");
            }
            return ExitCode::SUCCESS;
        };
        let mut words = line.split_whitespace();
        let (Some(group), Some(word)) = (
            words.next().and_then(|g| g.parse::<i32>().ok()),
            words.next(),
        ) else {
            continue;
        };
        if word == "done" {
            deadlines.remove(&group);
        } else if let Ok(ms) = word.parse::<u64>() {
            deadlines.insert(group, Instant::now() + Duration::from_millis(ms));
        }
    }
}

fn kill(group: i32, why: &str) {
    if nix::sys::signal::killpg(Pid::from_raw(group), Signal::SIGKILL).is_ok() {
        eprintln!("orchion fence: killed process group {group}: {why}");
    }
}

/// This process's fence: the sender of the lines its writer task passes to the fence's stdin.
static FENCE: Mutex<Option<async_mpsc::UnboundedSender<String>>> = Mutex::new(None);

/// Tells the fence `line`, starting it first when there is none (or the last one ended).
/// `false` when no fence can be started: the command runs without one.
pub(crate) fn tell(line: String) -> bool {
    let mut fence = FENCE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let line = match fence.as_ref() {
        Some(sender) => match sender.send(line) {
            Ok(()) => return true,
            Err(async_mpsc::error::SendError(line)) => line,
        },
        None => line,
    };
    match start() {
        Ok(sender) => {
            let sent = sender.send(line).is_ok();
            *fence = Some(sender);
            sent
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the fence; commands run without one");
            false
        }
    }
}

/// Starts `orchion __fence` and the task that writes to it.
fn start() -> std::io::Result<async_mpsc::UnboundedSender<String>> {
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .arg(FENCE_COMMAND)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .process_group(0)
        .spawn()?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("the fence has no stdin"))?;
    let (sender, mut lines) = async_mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        while let Some(line) = lines.recv().await {
            if stdin.write_all(line.as_bytes()).await.is_err() {
                break;
            }
        }
        drop(stdin);
        let _ = child.wait().await;
    });
    Ok(sender)
}
