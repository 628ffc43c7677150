//! `tether-cni-install`: the CNI DaemonSet's init step. Copies Tether's CNI plugins into the
//! host's CNI bin directory, each atomically (temporary file, fsync, rename) and only when the
//! content changed, so a runtime never sees a torn file and an unchanged node is left alone.
//!
//! The conflist is not written here on a cluster: tether-overlayd writes it once the node can
//! serve pods (`--cni-conflist`). `--conflist` installs one at once, for hosts without the
//! daemon's readiness to wait for.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use cni_overlay::cniconf::{Conflist, ConflistError};

/// Every plugin the conflist chains, and what cni-overlay delegates to.
const PLUGINS: [&str; 5] = [
    "cni-overlay",
    "cni-bridge",
    "cni-ipam",
    "cni-portmap",
    "cni-bandwidth",
];

/// The paths runtimes read, as mounted into the container (see docs/install.md for k3s and RKE2).
#[derive(Debug, Parser)]
#[command(
    name = "tether-cni-install",
    version,
    about = "Installs Tether's CNI plugins (and, with --conflist, a conflist) on a node"
)]
struct Args {
    /// Where the plugin binaries come from (the image).
    #[arg(long, env = "TETHER_CNI_FROM", default_value = "/opt/tether/bin")]
    from: PathBuf,
    /// The host's CNI bin directory (kubeadm /opt/cni/bin; k3s and RKE2 use their own).
    #[arg(long, env = "TETHER_CNI_BIN_DIR", default_value = "/host/opt/cni/bin")]
    bin_dir: PathBuf,
    /// The host's CNI conf directory (kubeadm /etc/cni/net.d).
    #[arg(
        long,
        env = "TETHER_CNI_CONF_DIR",
        default_value = "/host/etc/cni/net.d"
    )]
    conf_dir: PathBuf,
    /// Install this conflist now (on a cluster, tether-overlayd does it when ready instead).
    #[arg(long, env = "TETHER_CNI_CONFLIST")]
    conflist: Option<PathBuf>,
    /// With --conflist: move every other network configuration in the conf directory aside.
    #[arg(long, env = "TETHER_CNI_EXCLUSIVE")]
    exclusive: bool,
    /// Remove instead: the plugins from the bin directory and, with --conflist, the installed
    /// conflist (putting back what --exclusive moved aside). For uninstalling; see also
    /// `tether-overlayd --leave --purge`.
    #[arg(long)]
    uninstall: bool,
    /// Do nothing but wait to be stopped (SIGTERM or SIGINT): the uninstall DaemonSet's last
    /// container, so that it needs no image but Tether's.
    #[arg(long)]
    idle: bool,
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
    #[error(transparent)]
    Conflist(#[from] ConflistError),
    #[error("waiting for SIGTERM")]
    Signal(#[source] nix::Error),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> InstallError + 'a {
    move |source| InstallError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn say(changed: bool, path: &Path) {
    println!(
        "{} {}",
        if changed { "installed" } else { "unchanged" },
        path.display()
    );
}

fn uninstall(args: &Args) -> Result<(), InstallError> {
    for plugin in PLUGINS {
        let target = args.bin_dir.join(plugin);
        match std::fs::remove_file(&target) {
            Ok(()) => println!("removed {}", target.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("removing", &target)(e)),
        }
    }
    if let Some(source) = &args.conflist {
        let list = Conflist {
            source: source.clone(),
            conf_dir: args.conf_dir.clone(),
            exclusive: args.exclusive,
        };
        list.remove()?;
        println!("removed the conflist from {}", args.conf_dir.display());
    }
    Ok(())
}

fn run(args: &Args) -> Result<(), InstallError> {
    if args.uninstall {
        return uninstall(args);
    }
    std::fs::create_dir_all(&args.bin_dir).map_err(io("creating", &args.bin_dir))?;
    for plugin in PLUGINS {
        let source = args.from.join(plugin);
        let data = std::fs::read(&source).map_err(io("reading", &source))?;
        let target = args.bin_dir.join(plugin);
        let changed = cni_core::fsutil::write_if_changed(&target, &data, 0o755)
            .map_err(io("writing", &target))?;
        say(changed, &target);
    }
    if let Some(source) = &args.conflist {
        let list = Conflist {
            source: source.clone(),
            conf_dir: args.conf_dir.clone(),
            exclusive: args.exclusive,
        };
        say(list.install()?, &args.conf_dir);
    }
    Ok(())
}

/// Waits for SIGTERM or SIGINT (as PID 1 of a container, a signal without a handler would be
/// ignored: kubelet would have to wait out the grace period and kill).
fn idle() -> Result<(), InstallError> {
    use nix::sys::signal::{SigSet, Signal};
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    stop.thread_block()
        .and_then(|()| stop.wait())
        .map(drop)
        .map_err(InstallError::Signal)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let done = if args.idle { idle() } else { run(&args) };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tether-cni-install: {}", cni_core::error::chain(&e));
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_reference_is_what_the_arguments_say() {
        test_support::reference::check(&<Args as clap::CommandFactory>::command());
    }
}
