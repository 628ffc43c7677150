//! tether-nfs-agent beside nfs-ganesha for the agent tests (on this host and in the guest).

use test_support::ganesha::NfsServer;
use test_support::nfs_agent::AgentProcess;
use test_support::storage::LoopFs;
use test_support::tls::Certs;
use test_support::workspace_binary;

pub const AGENT: &str = "127.0.0.1:9820";

pub struct World {
    pub fs: LoopFs,
    pub nfs: NfsServer,
    pub agent: AgentProcess,
    pub tls: tempfile::TempDir,
    _certs: Certs,
}

/// A filesystem of `kind` (`megabytes`, mounted with `options`) exported by nfs-ganesha in the
/// namespace `{tag}nfs`, the agent serving it there on [`AGENT`], and the controller's TLS
/// directory as the Secret would be mounted.
pub fn world(kind: &str, megabytes: u64, options: &str, tag: &str) -> World {
    let fs = LoopFs::new(kind, megabytes, options);
    let nfs = NfsServer::start_exporting(tag, &fs.mnt);
    let certs = Certs::new();
    let export = nfs.share();
    let agent = AgentProcess::start(
        &workspace_binary(&super::binary(), "tether-nfs-agent"),
        &certs,
        &[format!("{export}={export}")],
        Some(&nfs.ns),
        9820,
    );
    // The controller's side: a TLS Secret as it would be mounted.
    let tls = tempfile::tempdir().unwrap();
    std::fs::copy(certs.path("ca.crt"), tls.path().join("ca.crt")).unwrap();
    std::fs::copy(certs.path("client.crt"), tls.path().join("tls.crt")).unwrap();
    std::fs::copy(certs.path("client.key"), tls.path().join("tls.key")).unwrap();
    World {
        fs,
        nfs,
        agent,
        tls,
        _certs: certs,
    }
}
