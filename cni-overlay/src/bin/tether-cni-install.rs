//! `tether-cni-install`: the CNI DaemonSet's init step. Copies Tether's CNI plugins into the
//! host's CNI bin directory and writes the conflist into its conf directory, each atomically
//! (temporary file, fsync, rename) and only when the content changed, so a runtime never sees a
//! torn file and an unchanged node is left alone.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;

const PLUGINS: [&str; 3] = ["cni-overlay", "cni-bridge", "cni-ipam"];

#[derive(Debug, Parser)]
#[command(
    name = "tether-cni-install",
    version,
    about = "Installs Tether's CNI plugins and conflist on a node"
)]
struct Args {
    /// Where the plugin binaries come from (the image).
    #[arg(long, env = "TETHER_CNI_FROM", default_value = "/opt/tether/bin")]
    from: PathBuf,
    /// The host's CNI bin directory, as mounted into the container.
    #[arg(long, env = "TETHER_CNI_BIN_DIR", default_value = "/host/opt/cni/bin")]
    bin_dir: PathBuf,
    /// The host's CNI conf directory, as mounted into the container.
    #[arg(
        long,
        env = "TETHER_CNI_CONF_DIR",
        default_value = "/host/etc/cni/net.d"
    )]
    conf_dir: PathBuf,
    /// The conflist to install (from the ConfigMap).
    #[arg(
        long,
        env = "TETHER_CNI_CONFLIST",
        default_value = "/etc/tether/10-tether.conflist"
    )]
    conflist: PathBuf,
}

#[derive(Debug, thiserror::Error)]
enum InstallError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("conflist {path}: {why}")]
    Conflist { path: PathBuf, why: String },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> InstallError + 'a {
    move |source| InstallError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `contents` to `path` with `mode` unless it holds exactly that already. True if written.
fn install(path: &Path, contents: &[u8], mode: u32) -> Result<bool, InstallError> {
    cni_core::fsutil::write_if_changed(path, contents, mode).map_err(io("writing", path))
}

/// The conflist must be one cni-overlay would run: JSON, a name, a cniVersion, cni-overlay first.
fn check_conflist(path: &Path, data: &[u8]) -> Result<(), InstallError> {
    let bad = |why: String| InstallError::Conflist {
        path: path.to_path_buf(),
        why,
    };
    let value: serde_json::Value =
        serde_json::from_slice(data).map_err(|e| bad(format!("not JSON: {e}")))?;
    for key in ["name", "cniVersion"] {
        if !value[key].is_string() {
            return Err(bad(format!("{key:?} is missing")));
        }
    }
    match value["plugins"][0]["type"].as_str() {
        Some("cni-overlay") => Ok(()),
        other => Err(bad(format!(
            "the first plugin must be cni-overlay, not {other:?}"
        ))),
    }
}

fn run(args: &Args) -> Result<(), InstallError> {
    std::fs::create_dir_all(&args.bin_dir).map_err(io("creating", &args.bin_dir))?;
    std::fs::create_dir_all(&args.conf_dir).map_err(io("creating", &args.conf_dir))?;
    for plugin in PLUGINS {
        let source = args.from.join(plugin);
        let data = std::fs::read(&source).map_err(io("reading", &source))?;
        let target = args.bin_dir.join(plugin);
        let changed = install(&target, &data, 0o755)?;
        println!(
            "{} {}",
            if changed { "installed" } else { "unchanged" },
            target.display()
        );
    }
    let data = std::fs::read(&args.conflist).map_err(io("reading", &args.conflist))?;
    check_conflist(&args.conflist, &data)?;
    let name = args
        .conflist
        .file_name()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("10-tether.conflist"));
    let target = args.conf_dir.join(name);
    let changed = install(&target, &data, 0o644)?;
    println!(
        "{} {}",
        if changed { "installed" } else { "unchanged" },
        target.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tether-cni-install: {e}");
            ExitCode::from(2)
        }
    }
}
