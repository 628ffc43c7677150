//! Running another CNI plugin (IPAM, or cni-bridge under cni-overlay) the way a runtime would:
//! as an executable found in CNI_PATH, or in-process when the caller links it ([`Delegates`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process, Output, Stdio};
use std::thread::JoinHandle;

use serde_json::Value;

use crate::error::{CniError, Code, ErrorObject};
use crate::plugin::{Outcome, Plugin};
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
    /// A linked delegate's thread panicked (release builds abort instead).
    #[error("{plugin} {command} (linked) panicked")]
    Panicked {
        plugin: String,
        command: &'static str,
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
            DelegateError::Spawn { .. }
            | DelegateError::Crashed { .. }
            | DelegateError::Panicked { .. } => Code::Io.into(),
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
    Delegates::EXECUTED.invoke(req, plugin, command, config)
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
    Delegates::EXECUTED.start(req, plugin, command, config)
}

/// A plugin compiled into the calling binary, called in-process in place of the executable of
/// the same name: the same request parsing, validation and result as the executable (see
/// [`crate::plugin`]'s dispatch), without a process (fork and exec cost about a millisecond
/// each, most of a chain's ADD).
pub trait Linked: Sync {
    /// Serves one request read from `env` and `stdin`, as the executable would.
    fn call(&self, env: &dyn Fn(&str) -> Option<String>, stdin: &[u8]) -> Outcome;
}

impl<P: Plugin + Sync> Linked for P {
    fn call(&self, env: &dyn Fn(&str) -> Option<String>, mut stdin: &[u8]) -> Outcome {
        crate::plugin::dispatch(self, env, &mut stdin).1
    }
}

/// Where a plugin finds its delegates: the plugins linked into this binary by the executable
/// name they stand in for, every other name as an executable in CNI_PATH. A linked plugin is
/// always the one shipped with its caller (the install puts both from one build), so it is
/// called even when CNI_PATH holds no executable of that name.
#[derive(Clone, Copy)]
pub struct Delegates {
    linked: &'static [(&'static str, &'static dyn Linked)],
}

impl Delegates {
    /// Every delegate is an executable.
    pub const EXECUTED: Delegates = Delegates { linked: &[] };

    pub const fn linking(linked: &'static [(&'static str, &'static dyn Linked)]) -> Delegates {
        Delegates { linked }
    }

    fn linked(&self, plugin: &str) -> Option<&'static dyn Linked> {
        self.linked
            .iter()
            .find(|(name, _)| *name == plugin)
            .map(|(_, linked)| *linked)
    }

    /// [`invoke`] with this set of linked plugins; a linked one runs on the calling thread.
    pub fn invoke(
        &self,
        req: &Request,
        plugin: &str,
        command: Command,
        config: &Value,
    ) -> Result<Option<CniResult>, DelegateError> {
        match self.linked(plugin) {
            Some(linked) => {
                let outcome = LinkedCall::new(req, command, config).serve(linked);
                result_of(plugin, command, outcome)
            }
            None => self.start(req, plugin, command, config)?.finish(),
        }
    }

    /// [`start`] with this set of linked plugins; a linked one runs on a thread of its own.
    pub fn start(
        &self,
        req: &Request,
        plugin: &str,
        command: Command,
        config: &Value,
    ) -> Result<Running, DelegateError> {
        let work = match self.linked(plugin) {
            Some(linked) => {
                let call = LinkedCall::new(req, command, config);
                let thread = std::thread::Builder::new()
                    .name(plugin.to_string())
                    .spawn(move || call.serve(linked));
                match thread {
                    Ok(thread) => Work::Thread(thread),
                    // No thread to be had: the call is made here and now instead.
                    Err(e) => {
                        tracing::debug!(plugin, error = %e, "no thread for a linked delegate");
                        Work::Done(LinkedCall::new(req, command, config).serve(linked))
                    }
                }
            }
            None => execute(req, plugin, command, config)?,
        };
        Ok(Running {
            work,
            plugin: plugin.to_string(),
            command,
        })
    }
}

/// The environment and stdin a linked plugin reads: what [`execute`] gives an executable.
struct LinkedCall {
    command: Command,
    container_id: String,
    ifname: String,
    netns: String,
    input: Vec<u8>,
}

impl LinkedCall {
    fn new(req: &Request, command: Command, config: &Value) -> LinkedCall {
        LinkedCall {
            command,
            container_id: req.container_id.clone(),
            ifname: req.ifname.clone(),
            netns: req
                .netns
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            input: serde_json::to_vec(config).unwrap_or_default(),
        }
    }

    fn serve(&self, linked: &dyn Linked) -> Outcome {
        linked.call(&|key| self.env(key), &self.input)
    }

    /// The four variables a delegate is given; the rest (CNI_PATH, CNI_ARGS) are inherited.
    fn env(&self, key: &str) -> Option<String> {
        match key {
            "CNI_COMMAND" => Some(self.command.as_str().to_string()),
            "CNI_CONTAINERID" => Some(self.container_id.clone()),
            "CNI_IFNAME" => Some(self.ifname.clone()),
            "CNI_NETNS" => Some(self.netns.clone()),
            other => std::env::var(other).ok(),
        }
    }
}

/// Starts the executable `plugin` found in CNI_PATH.
fn execute(
    req: &Request,
    plugin: &str,
    command: Command,
    config: &Value,
) -> Result<Work, DelegateError> {
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
    Ok(Work::Process { child, path })
}

/// The delegate dies with this process: a runtime that kills a plugin (its timeout, a node
/// shutting down) must not find the plugin's IPAM child still at work afterwards, freeing leases
/// by a valid list the runtime has moved past, or writing a lease after the runtime's DEL.
/// `PR_SET_PDEATHSIG` sends SIGKILL when the forking thread exits: the main thread, or a linked
/// delegate's thread, which waits for its own delegates before it ends (a [`Running`] waits when
/// dropped), so the signal comes with the process's death and never early; a parent that died
/// before the child set it is caught by comparing the parent's pid, and the child exits before
/// exec. The kernel sends the signal
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
    work: Work,
    plugin: String,
    command: Command,
}

/// What a [`Running`] waits for.
enum Work {
    Process { child: Child, path: PathBuf },
    Thread(JoinHandle<Outcome>),
    Done(Outcome),
    Collected,
}

impl Running {
    /// Waits for the delegate: its parsed result for ADD, `None` for other commands, or its error.
    pub fn finish(mut self) -> Result<Option<CniResult>, DelegateError> {
        let (plugin, command) = (std::mem::take(&mut self.plugin), self.command);
        match std::mem::replace(&mut self.work, Work::Collected) {
            Work::Process { child, path } => {
                let output = child
                    .wait_with_output()
                    .map_err(|source| DelegateError::Spawn {
                        plugin: plugin.clone(),
                        path,
                        source,
                    })?;
                let stdout = outcome(&plugin, command, output)?;
                if command != Command::Add {
                    return Ok(None);
                }
                let value: Value =
                    serde_json::from_slice(&stdout).map_err(|source| DelegateError::BadResult {
                        plugin: plugin.clone(),
                        command: command.as_str(),
                        source,
                    })?;
                result_of(&plugin, command, Ok(Some(value)))
            }
            Work::Thread(thread) => match thread.join() {
                Ok(outcome) => result_of(&plugin, command, outcome),
                Err(_) => Err(DelegateError::Panicked {
                    plugin,
                    command: command.as_str(),
                }),
            },
            Work::Done(outcome) => result_of(&plugin, command, outcome),
            Work::Collected => Ok(None),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.work, Work::Collected) {
            Work::Process { child, .. } => {
                let _ = child.wait_with_output();
            }
            Work::Thread(thread) => {
                let _ = thread.join();
            }
            Work::Done(_) | Work::Collected => {}
        }
    }
}

/// The delegate's answer, executed or linked, as the caller gets it: the parsed result for ADD,
/// `None` for other commands, or the error it reported.
fn result_of(
    plugin: &str,
    command: Command,
    outcome: Outcome,
) -> Result<Option<CniResult>, DelegateError> {
    match outcome {
        Ok(Some(value)) if command == Command::Add => CniResult::from_value(&value)
            .map(Some)
            .map_err(|source| DelegateError::BadResult {
                plugin: plugin.to_string(),
                command: command.as_str(),
                source,
            }),
        Ok(_) => Ok(None),
        Err(error) => Err(reported(plugin, command, error)),
    }
}

fn reported(plugin: &str, command: Command, error: ErrorObject) -> DelegateError {
    DelegateError::Reported {
        plugin: plugin.to_string(),
        command: command.as_str(),
        code: error.code,
        details: (!error.details.is_empty()).then_some(Details(error.details)),
        msg: error.msg,
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
        Ok(error) => Err(reported(plugin, command, error)),
        Err(_) => Err(DelegateError::Crashed {
            plugin: plugin.to_string(),
            command: command.as_str(),
            status: output.status,
            stderr,
        }),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::Attachment;
    use crate::result::Interface;

    /// A linked plugin that answers with what it was given, and fails for container "bad".
    struct Echo;

    #[derive(Debug, thiserror::Error)]
    #[error("echo refuses {0}")]
    struct Refused(String);

    impl CniError for Refused {
        fn code(&self) -> u32 {
            11
        }
    }

    impl Plugin for Echo {
        type Error = Refused;

        fn add(&self, req: &Request) -> Result<CniResult, Refused> {
            if req.container_id == "bad" {
                return Err(Refused(req.container_id.clone()));
            }
            Ok(CniResult {
                interfaces: vec![Interface {
                    name: format!("{}/{}", req.container_id, req.ifname),
                    sandbox: req.netns.as_ref().map(|p| p.display().to_string()),
                    ..Interface::default()
                }],
                ..CniResult::default()
            })
        }
        fn del(&self, req: &Request) -> Result<(), Refused> {
            match req.container_id.as_str() {
                "bad" => Err(Refused(req.container_id.clone())),
                _ => Ok(()),
            }
        }
        fn check(&self, _: &Request) -> Result<(), Refused> {
            Ok(())
        }
        fn gc(&self, _: &Request, _: &[Attachment]) -> Result<(), Refused> {
            Ok(())
        }
        fn status(&self, _: &Request) -> Result<(), Refused> {
            Ok(())
        }
    }

    const LINKED: Delegates = Delegates::linking(&[("echo", &Echo)]);

    fn request(container_id: &str) -> Request {
        let env = |key: &str| match key {
            "CNI_CONTAINERID" => Some(container_id.to_string()),
            "CNI_IFNAME" => Some("eth0".to_string()),
            "CNI_NETNS" => Some("/var/run/netns/p".to_string()),
            // Nothing to execute: a linked delegate needs no executable.
            "CNI_PATH" => Some("/nonexistent".to_string()),
            _ => None,
        };
        Request::from_parts(
            Command::Add,
            &env,
            json!({"cniVersion": "1.0.0", "name": "n", "type": "outer"}),
        )
        .expect("request")
    }

    fn config() -> Value {
        json!({"cniVersion": "1.0.0", "name": "n", "type": "echo"})
    }

    #[test]
    fn a_linked_delegate_gets_the_request_an_executable_would() {
        let req = request("c1");
        for result in [
            LINKED.invoke(&req, "echo", Command::Add, &config()),
            LINKED
                .start(&req, "echo", Command::Add, &config())
                .and_then(Running::finish),
        ] {
            let result = result.expect("linked ADD").expect("a result");
            assert_eq!(result.interfaces[0].name, "c1/eth0");
            assert_eq!(
                result.interfaces[0].sandbox.as_deref(),
                Some("/var/run/netns/p")
            );
        }
        assert!(LINKED
            .invoke(&req, "echo", Command::Del, &config())
            .expect("linked DEL")
            .is_none());
    }

    #[test]
    fn a_linked_delegates_error_is_reported_as_an_executables() {
        let req = request("bad");
        for command in [Command::Add, Command::Del] {
            let err = LINKED
                .invoke(&req, "echo", command, &config())
                .expect_err("refused");
            assert_eq!(err.code(), 11);
            assert_eq!(
                err.to_string(),
                format!("echo {}: echo refuses bad", command.as_str())
            );
        }
        // A request the delegate cannot parse fails there, as it would in its own process.
        let err = LINKED
            .invoke(&request("c2"), "echo", Command::Add, &json!({"name": "n"}))
            .expect_err("no version");
        assert!(matches!(err, DelegateError::Reported { .. }), "{err:?}");
    }

    #[test]
    fn names_not_linked_are_executables_from_cni_path() {
        let err = LINKED
            .invoke(&request("c3"), "other", Command::Add, &config())
            .expect_err("not in CNI_PATH");
        assert!(matches!(err, DelegateError::NotFound { .. }), "{err:?}");
    }
}
