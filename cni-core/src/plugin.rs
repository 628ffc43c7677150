//! The plugin entry point: environment + stdin in, result or error object out.

use std::io::{Read, Write};

use serde_json::{json, Value};

use crate::config::Attachment;
use crate::error::{CniError, ErrorObject};
use crate::logging;
use crate::request::{Command, Request, RequestError};
use crate::result::CniResult;
use crate::version::Version;

/// A CNI plugin. Each verb gets a fully validated [`Request`].
pub trait Plugin {
    type Error: CniError;

    fn add(&self, req: &Request) -> Result<CniResult, Self::Error>;
    fn del(&self, req: &Request) -> Result<(), Self::Error>;
    fn check(&self, req: &Request) -> Result<(), Self::Error>;
    fn gc(&self, req: &Request, valid: &[Attachment]) -> Result<(), Self::Error>;
    fn status(&self, req: &Request) -> Result<(), Self::Error>;
}

/// Runs the plugin against the real process environment, stdin and stdout; returns the exit code.
pub fn run<P: Plugin>(plugin: &P) -> std::process::ExitCode {
    let env = |key: &str| std::env::var(key).ok();
    let code = run_with(
        plugin,
        &env,
        &mut std::io::stdin().lock(),
        &mut std::io::stdout().lock(),
    );
    // The answer is out; the kept nf_tables socket is not closed by the exit (which would wait
    // for the kernel to free what this call deleted).
    crate::firewall::release();
    std::process::ExitCode::from(code)
}

/// The testable core of [`run`].
pub fn run_with<P: Plugin>(
    plugin: &P,
    env: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
) -> u8 {
    let (version_hint, outcome) = dispatch(plugin, env, stdin);
    let (body, code) = match outcome {
        Ok(Some(value)) => (value, 0),
        Ok(None) => return 0,
        Err(err) => {
            // No-op when the request got far enough to configure logging itself.
            logging::init(None, None, None);
            tracing::error!(code = err.code, msg = %err.msg, details = %err.details, "plugin failed");
            let mut err = err;
            err.cni_version = version_hint;
            (json!(err), 1)
        }
    };
    // Nothing useful can be done if stdout is gone; the exit code still tells the runtime.
    let _ = serde_json::to_writer(&mut *stdout, &body);
    let _ = stdout.flush();
    code
}

/// What a plugin call gives the runtime: a result (ADD, VERSION), nothing, or an error object.
pub(crate) type Outcome = Result<Option<Value>, ErrorObject>;

/// Reads and validates one request and runs it: everything [`run_with`] does but writing the
/// answer. Returns the version the answer is given in with the outcome. Also the in-process
/// delegate's entry ([`crate::delegate::Delegates`]), so that a linked plugin sees exactly what
/// an executed one would.
pub(crate) fn dispatch<P: Plugin + ?Sized>(
    plugin: &P,
    env: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
) -> (String, Outcome) {
    let latest = Version::LATEST.as_str().to_string();
    let fail = |e: RequestError, v: &str| (v.to_string(), Err(ErrorObject::from_error(&e, v)));

    let command = match env("CNI_COMMAND") {
        None => return fail(RequestError::MissingCommand, &latest),
        Some(c) => match Command::parse(&c) {
            Some(c) => c,
            None => return fail(RequestError::UnknownCommand(c), &latest),
        },
    };
    let mut input = Vec::new();
    if let Err(e) = stdin.read_to_end(&mut input) {
        return fail(RequestError::ReadStdin(e), &latest);
    }
    if command == Command::Version {
        return (latest.clone(), Ok(Some(version_info())));
    }
    let raw: Value = match serde_json::from_slice(&input) {
        Ok(v) => v,
        Err(e) => return fail(RequestError::Json(e), &latest),
    };
    let asked = raw
        .get("cniVersion")
        .and_then(Value::as_str)
        .unwrap_or(&latest)
        .to_string();
    let req = match Request::from_parts(command, env, raw) {
        Ok(r) => r,
        Err(e) if command == Command::Del && e.nothing_to_undo() => {
            logging::init(None, None, None);
            tracing::warn!(error = %e, "DEL of an attachment no ADD could have made: nothing to do");
            return (asked, Ok(None));
        }
        Err(e) => return fail(e, &asked),
    };
    logging::init(
        req.config.log_file.as_deref(),
        req.config.log_level.as_deref(),
        req.config.log_format.as_deref(),
    );
    tracing::debug!(command = command.as_str(), container = %req.container_id, ifname = %req.ifname, network = %req.config.name, "invoked");

    let to_obj = |e: P::Error| ErrorObject::from_error(&e, &asked);
    let outcome = match command {
        Command::Add => plugin
            .add(&req)
            .map(|r| Some(r.to_value(req.version)))
            .map_err(to_obj),
        Command::Del => plugin.del(&req).map(|()| None).map_err(to_obj),
        Command::Check => plugin.check(&req).map(|()| None).map_err(to_obj),
        Command::Gc => plugin
            .gc(&req, &req.config.gc_valid_attachments())
            .map(|()| None)
            .map_err(to_obj),
        Command::Status => plugin.status(&req).map(|()| None).map_err(to_obj),
        Command::Version => Ok(Some(version_info())),
    };
    (asked, outcome)
}

fn version_info() -> Value {
    json!({
        "cniVersion": Version::LATEST.as_str(),
        "supportedVersions": Version::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>(),
    })
}
