//! Running another CNI plugin (IPAM, or cni-bridge under cni-overlay) the way a runtime would.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Output, Stdio};

use serde_json::Value;

use crate::error::{CniError, Code, ErrorObject};
use crate::request::{Command, Request};
use crate::result::CniResult;

#[derive(Debug, thiserror::Error)]
pub enum DelegateError {
    #[error("plugin {plugin:?} is not a plain executable name")]
    BadName { plugin: String },
    #[error("plugin {plugin:?} not found in CNI_PATH ({searched})")]
    NotFound { plugin: String, searched: String },
    #[error("running plugin {plugin} ({path}) failed")]
    Spawn {
        plugin: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The delegate reported a CNI error: its code is passed on unchanged, its message is ours
    /// with the delegate named, its details are our details.
    #[error("{plugin} {command}: {msg}")]
    Reported {
        plugin: String,
        command: &'static str,
        code: u32,
        msg: String,
        #[source]
        details: Option<Details>,
    },
    #[error(
        "{plugin} {command} exited with {status} without a CNI error object (stderr: {stderr})"
    )]
    Crashed {
        plugin: String,
        command: &'static str,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("{plugin} {command} printed an unreadable result")]
    BadResult {
        plugin: String,
        command: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// A delegate's `details`, carried as the cause of [`DelegateError::Reported`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Details(pub String);

impl CniError for DelegateError {
    fn code(&self) -> u32 {
        match self {
            DelegateError::Reported { code, .. } => *code,
            DelegateError::BadName { .. } => Code::InvalidConfig.into(),
            DelegateError::NotFound { .. } => Code::InvalidEnvironment.into(),
            DelegateError::Spawn { .. } | DelegateError::Crashed { .. } => Code::Io.into(),
            DelegateError::BadResult { .. } => Code::Decode.into(),
        }
    }
}

/// Finds `plugin` in the request's CNI_PATH.
pub fn find(plugin: &str, cni_path: &[PathBuf]) -> Result<PathBuf, DelegateError> {
    if plugin.is_empty() || plugin.contains('/') || plugin == "." || plugin == ".." {
        return Err(DelegateError::BadName {
            plugin: plugin.to_string(),
        });
    }
    cni_path
        .iter()
        .map(|dir| dir.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| DelegateError::NotFound {
            plugin: plugin.to_string(),
            searched: cni_path
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":"),
        })
}

/// Runs `plugin` with `command`, the request's environment and `config` on stdin. Returns the
/// parsed result for ADD and `None` otherwise.
pub fn invoke(
    req: &Request,
    plugin: &str,
    command: Command,
    config: &Value,
) -> Result<Option<CniResult>, DelegateError> {
    start(req, plugin, command, config)?.finish()
}

/// Starts `plugin` like [`invoke`] and returns at once, so that the caller can do independent
/// work while the delegate runs; [`Running::finish`] collects the outcome. A `Running` that is
/// dropped unfinished still waits for the delegate, so that it never outlives the caller's
/// decision about what to undo.
pub fn start(
    req: &Request,
    plugin: &str,
    command: Command,
    config: &Value,
) -> Result<Running, DelegateError> {
    let path = find(plugin, &req.cni_path)?;
    let spawn_err = |source| DelegateError::Spawn {
        plugin: plugin.to_string(),
        path: path.clone(),
        source,
    };
    let mut process = Process::new(&path);
    process
        .env("CNI_COMMAND", command.as_str())
        .env("CNI_CONTAINERID", &req.container_id)
        .env("CNI_IFNAME", &req.ifname)
        .env("CNI_NETNS", req.netns.as_deref().unwrap_or(Path::new("")))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    tie_to_parent(&mut process);
    let mut child = process.spawn().map_err(spawn_err)?;
    let input = serde_json::to_vec(config).unwrap_or_default();
    if let Some(mut stdin) = child.stdin.take() {
        // A delegate that exits without reading stdin is reported through its exit status. The
        // configuration is far smaller than a pipe's buffer, so this does not wait for the child.
        let _ = stdin.write_all(&input);
    }
    Ok(Running {
        child: Some(child),
        plugin: plugin.to_string(),
        path,
        command,
    })
}

/// The delegate dies with this process: a runtime that kills a plugin (its timeout, a node
/// shutting down) must not find the plugin's IPAM child still at work afterwards, freeing leases
/// by a valid list the runtime has moved past, or writing a lease after the runtime's DEL.
/// `PR_SET_PDEATHSIG` sends SIGKILL when the parent exits (plugins are single-threaded, so the
/// forking thread is the process); a parent that died before the child set it is caught by
/// comparing the parent's pid, and the child exits before exec. The kernel sends the signal
/// before the parent's exit is visible to the runtime, so nothing the runtime does afterwards
/// races with the child beyond a system call it had already entered (and cni-ipam's lock
/// serializes those).
fn tie_to_parent(process: &mut Process) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: between fork and exec the closure calls only prctl, getppid and _exit, which are
    // async-signal-safe, and touches no memory but its captured integer.
    unsafe {
        process.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// A delegate started by [`start`].
pub struct Running {
    child: Option<Child>,
    plugin: String,
    path: PathBuf,
    command: Command,
}

impl Running {
    /// Waits for the delegate: its parsed result for ADD, `None` for other commands, or its error.
    pub fn finish(mut self) -> Result<Option<CniResult>, DelegateError> {
        let (plugin, command) = (std::mem::take(&mut self.plugin), self.command);
        let Some(child) = self.child.take() else {
            return Ok(None);
        };
        let output = child
            .wait_with_output()
            .map_err(|source| DelegateError::Spawn {
                plugin: plugin.clone(),
                path: self.path.clone(),
                source,
            })?;
        let stdout = outcome(&plugin, command, output)?;
        if command != Command::Add {
            return Ok(None);
        }
        let bad_result = |source| DelegateError::BadResult {
            plugin: plugin.clone(),
            command: command.as_str(),
            source,
        };
        let value: Value = serde_json::from_slice(&stdout).map_err(bad_result)?;
        CniResult::from_value(&value).map(Some).map_err(bad_result)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            let _ = child.wait_with_output();
        }
    }
}

/// The delegate's stdout when it succeeded, or the error it reported.
fn outcome(plugin: &str, command: Command, output: Output) -> Result<Vec<u8>, DelegateError> {
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    if !stderr.is_empty() {
        tracing::debug!(plugin, command = command.as_str(), %stderr, "delegate stderr");
    }
    if output.status.success() {
        return Ok(output.stdout);
    }
    match serde_json::from_slice::<ErrorObject>(&output.stdout) {
        Ok(error) => Err(DelegateError::Reported {
            plugin: plugin.to_string(),
            command: command.as_str(),
            code: error.code,
            details: (!error.details.is_empty()).then_some(Details(error.details)),
            msg: error.msg,
        }),
        Err(_) => Err(DelegateError::Crashed {
            plugin: plugin.to_string(),
            command: command.as_str(),
            status: output.status,
            stderr,
        }),
    }
}
