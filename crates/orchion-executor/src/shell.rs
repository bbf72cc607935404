//! The `shell` executor: runs a command in its own process group.

use std::{process::Stdio, time::Duration};

use async_trait::async_trait;
use nix::{sys::signal::Signal, unistd::Pid};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, BufReader},
    process::Command,
};

use crate::{
    Context, Executor, MAX_OUTPUT_TAIL, Outcome, OutputLine, ShellSpec, cut_line, parse_checked,
};

pub(crate) struct Shell;

/// The most `$ORCHION_OUTPUTS` may hold.
const MAX_OUTPUTS_BYTES: u64 = crate::MAX_OUTPUTS_BYTES as u64;

/// The directory made for one attempt of a command: its working space (`$ORCHION_TASK_DIR`,
/// also `$TMPDIR`) and the file it writes its outputs to (`$ORCHION_OUTPUTS`): `key=value`
/// lines (as GitHub Actions' `$GITHUB_OUTPUT`), or one JSON object. Made exclusively, with a
/// random name, readable by the agent's user alone, so nobody else can plant or read what is
/// in it; removed with everything in it when dropped.
struct TaskDir(std::path::PathBuf);

impl TaskDir {
    fn create() -> std::io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt as _;
        let mut builder = std::fs::DirBuilder::new();
        builder.mode(0o700);
        loop {
            let path =
                std::env::temp_dir().join(format!("orchion-task-{:032x}", rand::random::<u128>()));
            match builder.create(&path) {
                Ok(()) => return Ok(Self(path)),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn outputs(&self) -> std::path::PathBuf {
        self.0.join("outputs")
    }

    /// The outputs as a JSON object, or `None` when the command wrote none.
    fn read_outputs(&self) -> Result<Option<String>, String> {
        let path = self.outputs();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            return Ok(None);
        };
        if !meta.is_file() {
            return Err("$ORCHION_OUTPUTS is not a regular file".into());
        }
        if meta.len() > MAX_OUTPUTS_BYTES {
            return Err(format!(
                "$ORCHION_OUTPUTS holds {} bytes; at most {MAX_OUTPUTS_BYTES}",
                meta.len()
            ));
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read $ORCHION_OUTPUTS: {e}"))?;
        parse_outputs(&text)
    }
}

impl Drop for TaskDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `key=value` lines, or one JSON object, as a JSON object; `None` when empty.
fn parse_outputs(text: &str) -> Result<Option<String>, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Ok(None);
    }
    if trimmed.starts_with('{') {
        return match serde_json::from_str::<serde_json::Value>(trimmed) {
            Ok(value @ serde_json::Value::Object(_)) => Ok(Some(value.to_string())),
            Ok(_) | Err(_) => {
                Err("$ORCHION_OUTPUTS starts with `{` but is not one JSON object".into())
            }
        };
    }
    let mut outputs = serde_json::Map::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match line.split_once('=') {
            Some((key, value)) if !key.trim().is_empty() => {
                outputs.insert(
                    key.trim().to_owned(),
                    serde_json::Value::String(value.to_owned()),
                );
            }
            _ => {
                return Err(format!(
                    "line {} of $ORCHION_OUTPUTS is not `key=value`: {}",
                    n + 1,
                    cut_line(line.to_owned())
                ));
            }
        }
    }
    Ok(Some(serde_json::Value::Object(outputs).to_string()))
}

#[async_trait]
impl Executor for Shell {
    fn name(&self) -> &'static str {
        "shell"
    }

    async fn run(&self, spec: &str, context: Context) -> Outcome {
        match parse_checked::<ShellSpec>(spec) {
            Ok(spec) => run_command(&spec, context).await,
            Err(error) => Outcome::Failed {
                exit_code: None,
                error,
                output: None,
            },
        }
    }
}

/// Runs a command as the `shell` executor does: in its own process group, lines streamed to
/// `context.output`, stopped on cancel or deadline (SIGTERM to the group, SIGKILL after the
/// grace), stdout's tail kept as output, `$ORCHION_OUTPUTS` read as outputs. Its environment
/// is `context.inherited`, `TMPDIR`, the spec's `env`, then Orchion's own variables; it runs in
/// the working directory the spec names, or in its task directory. Other executors
/// that drive a command-line tool (the deployment engines) run it through here.
pub async fn run_command(spec: &ShellSpec, context: Context) -> Outcome {
    let task_dir = match TaskDir::create() {
        Ok(dir) => dir,
        Err(e) => {
            return Outcome::Failed {
                exit_code: None,
                error: format!(
                    "cannot make the task's directory under {}: {e}",
                    std::env::temp_dir().display()
                ),
                output: None,
            };
        }
    };
    let mut command = Command::new(&spec.command);
    command
        .args(&spec.args)
        .env_clear()
        .envs(context.inherited.iter())
        .env("TMPDIR", &task_dir.0)
        .envs(&spec.env)
        .envs(&context.env)
        .env("ORCHION_TASK_DIR", &task_dir.0)
        .env("ORCHION_OUTPUTS", task_dir.outputs())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    match &spec.working_dir {
        Some(dir) => command.current_dir(dir),
        None => command.current_dir(&task_dir.0),
    };
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            return Outcome::Failed {
                exit_code: None,
                error: format!("cannot start `{}`: {e}", spec.command),
                output: None,
            };
        }
    };
    let group = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);
    let fence = match (&context.fence, group) {
        (Some(until), Some(group)) => Some(Fence::start(group, until.clone())),
        _ => None,
    };
    let stdout = child
        .stdout
        .take()
        .map(|s| forward(s, "stdout", context.output.clone(), true));
    let stderr = child
        .stderr
        .take()
        .map(|s| forward(s, "stderr", context.output.clone(), false));

    enum End {
        Exited(std::io::Result<std::process::ExitStatus>),
        Cancelled,
        TimedOut,
    }
    let deadline = async {
        match context.deadline {
            Some(limit) => tokio::time::sleep(limit).await,
            None => std::future::pending().await,
        }
    };
    let end = tokio::select! {
        status = child.wait() => End::Exited(status),
        () = context.cancel.cancelled() => End::Cancelled,
        () = deadline => End::TimedOut,
    };
    if !matches!(end, End::Exited(_)) {
        stop_group(group, &mut child, context.kill_grace).await;
    }
    if let Some(fence) = fence {
        fence.done().await;
    }
    let tail = match stdout {
        Some(task) => task.await.unwrap_or_default(),
        None => String::new(),
    };
    if let Some(task) = stderr {
        let _ = task.await;
    }
    let output = (!tail.is_empty()).then_some(tail);
    match end {
        End::Cancelled => Outcome::Cancelled,
        End::TimedOut => Outcome::TimedOut,
        End::Exited(Ok(status)) if status.success() => match task_dir.read_outputs() {
            Ok(outputs) => Outcome::Succeeded { output, outputs },
            Err(error) => Outcome::Failed {
                exit_code: status.code(),
                error,
                output,
            },
        },
        End::Exited(Ok(status)) => Outcome::Failed {
            exit_code: status.code(),
            error: match status.code() {
                Some(code) => format!("exit status {code}"),
                None => format!("killed by a signal ({status})"),
            },
            output,
        },
        End::Exited(Err(e)) => Outcome::Failed {
            exit_code: None,
            error: format!("waiting for the process failed: {e}"),
            output,
        },
    }
}

/// A command's place in the agent's fence (`fence.rs`): the task that keeps the fence told of
/// the command's deadline.
struct Fence {
    keeper: tokio::task::JoinHandle<()>,
    done: tokio::sync::oneshot::Sender<()>,
}

impl Fence {
    /// Tells the fence of `group` and of every new deadline in `until`, until the command ends.
    /// Without a fence (its binary cannot start) the command runs on, and the agent still stops
    /// it itself when its lease runs out.
    fn start(group: Pid, mut until: tokio::sync::watch::Receiver<std::time::Instant>) -> Self {
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        let group = group.as_raw();
        let keeper = tokio::spawn(async move {
            let mut finished = std::pin::pin!(finished);
            loop {
                let left = until
                    .borrow_and_update()
                    .saturating_duration_since(std::time::Instant::now());
                if !crate::fence::tell(format!("{group} {}\n", left.as_millis())) {
                    return;
                }
                tokio::select! {
                    changed = until.changed() => if changed.is_err() {
                        // Nobody renews any more: the last deadline stands until the end.
                        let _ = (&mut finished).await;
                        break;
                    },
                    _ = &mut finished => break,
                }
            }
            crate::fence::tell(format!("{group} done\n"));
        });
        Self { keeper, done }
    }

    /// The command ended: the fence forgets it.
    async fn done(self) {
        let _ = self.done.send(());
        let _ = self.keeper.await;
    }
}

/// SIGTERM to the whole process group, then SIGKILL after `grace` if anything is left.
async fn stop_group(group: Option<Pid>, child: &mut tokio::process::Child, grace: Duration) {
    if let Some(group) = group {
        let _ = nix::sys::signal::killpg(group, Signal::SIGTERM);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        if let Some(group) = group {
            let _ = nix::sys::signal::killpg(group, Signal::SIGKILL);
        }
        let _ = child.wait().await;
    } else if let Some(group) = group {
        // The leader exited; children it left in the group get the same end.
        let _ = nix::sys::signal::killpg(group, Signal::SIGKILL);
    }
}

/// Sends each line of `reader` to `output`; returns the tail of the text when `keep_tail`.
fn forward(
    reader: impl AsyncRead + Unpin + Send + 'static,
    stream: &'static str,
    output: tokio::sync::mpsc::Sender<OutputLine>,
    keep_tail: bool,
) -> tokio::task::JoinHandle<String> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(reader).split(b'\n');
        let mut tail = String::new();
        while let Ok(Some(bytes)) = lines.next_segment().await {
            let line = cut_line(
                String::from_utf8_lossy(&bytes)
                    .trim_end_matches('\r')
                    .to_owned(),
            );
            if keep_tail {
                tail.push_str(&line);
                tail.push('\n');
                if tail.len() > 2 * MAX_OUTPUT_TAIL {
                    let mut cut = tail.len() - MAX_OUTPUT_TAIL;
                    while !tail.is_char_boundary(cut) {
                        cut += 1;
                    }
                    tail.drain(..cut);
                }
            }
            let sent = output
                .send(OutputLine {
                    stream,
                    line,
                    at: time::OffsetDateTime::now_utc(),
                })
                .await;
            if sent.is_err() {
                break;
            }
        }
        if tail.len() > MAX_OUTPUT_TAIL {
            let mut cut = tail.len() - MAX_OUTPUT_TAIL;
            while !tail.is_char_boundary(cut) {
                cut += 1;
            }
            tail.drain(..cut);
        }
        tail
    })
}
