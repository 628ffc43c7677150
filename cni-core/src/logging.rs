//! `tracing` output for plugins: stderr or a file, never stdout (stdout carries the result).

use std::fs::OpenOptions;
use std::sync::Mutex;

use tracing_subscriber::filter::LevelFilter;

/// Installs the subscriber once per process. `level` defaults to `warn`; the `TETHER_LOG`
/// environment variable overrides the configured level. `format` `json` writes one JSON object
/// per line (for log collectors), anything else text. A log file that cannot be opened falls
/// back to stderr rather than failing the operation.
pub fn init(log_file: Option<&str>, level: Option<&str>, format: Option<&str>) {
    // A delegate called in-process finds its caller's subscriber (the same conflist's logging).
    if tracing::dispatcher::has_been_set() {
        return;
    }
    let level = std::env::var("TETHER_LOG")
        .ok()
        .or_else(|| level.map(str::to_string))
        .and_then(|l| l.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::WARN);
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .with_ansi(false);
    let file =
        log_file.and_then(|path| OpenOptions::new().create(true).append(true).open(path).ok());
    let json = format == Some("json");
    let _ = match (file, json) {
        (Some(file), false) => builder.with_writer(Mutex::new(file)).try_init(),
        (Some(file), true) => builder
            .json()
            .flatten_event(true)
            .with_writer(Mutex::new(file))
            .try_init(),
        (None, false) => builder.with_writer(std::io::stderr).try_init(),
        (None, true) => builder
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .try_init(),
    };
}
