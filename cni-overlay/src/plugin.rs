//! The cni-overlay CNI plugin: turns the node facts written by tether-overlayd into a cni-bridge
//! configuration (cni-ipam on the node's subnet, routes to the cluster CIDR, the VXLAN MTU) and
//! delegates. The delegate configuration is saved per attachment so that DEL works even after the
//! daemon or its file is gone, and always releases the address.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use cni_core::delegate::{DelegateError, Delegates};
use cni_core::fsutil::{remove_if_exists, write_replace};
use cni_core::teardown::Failures;
use cni_core::{Attachment, CniError, CniResult, Code, Command, Plugin, Request};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::chained::{self, Chained};
use crate::facts::{FactsError, NodeFacts, DEFAULT_RUN_DIR};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/cni/tether-overlay";
const DELEGATE: &str = "cni-bridge";
/// cni-bridge (and through it cni-ipam) is called in-process, not executed.
const DELEGATES: Delegates = Delegates::linking(&[(DELEGATE, &cni_bridge::BridgePlugin)]);
/// The pods' bridge (unless the conflist names another).
pub const BRIDGE: &str = "cni0";
const DEFAULT_IPAM: &str = "cni-ipam";

#[derive(Debug, thiserror::Error)]
pub enum OverlayError {
    #[error("invalid cni-overlay configuration: {0}")]
    InvalidConfig(String),
    #[error("the node is not ready for pods yet")]
    NotReady(#[source] FactsError),
    #[error(transparent)]
    Facts(FactsError),
    #[error("saving the delegate configuration {path}")]
    State {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Delegate(#[from] DelegateError),
    #[error("cni-overlay cannot serve ADD")]
    NotAvailable(#[source] FactsError),
    /// GC keeps going and reports every failure together.
    #[error("{}", .0.iter().map(cni_core::error::chain).collect::<Vec<_>>().join("; "))]
    Several(Vec<OverlayError>),
}

impl CniError for OverlayError {
    fn code(&self) -> u32 {
        match self {
            OverlayError::InvalidConfig(_) => Code::InvalidConfig.into(),
            OverlayError::NotReady(_) => Code::TryAgainLater.into(),
            OverlayError::Facts(_) | OverlayError::State { .. } => Code::Io.into(),
            OverlayError::Delegate(e) => e.code(),
            OverlayError::NotAvailable(_) => Code::NotAvailable.into(),
            OverlayError::Several(errors) => {
                cni_core::error::most_severe(errors.iter().map(CniError::code), Code::Io.into())
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OverlayConfIn {
    run_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
}

struct Settings {
    run_dir: PathBuf,
    state_dir: PathBuf,
    /// cni-portmap and cni-bandwidth, when the entry runs them in-process.
    chained: Chained,
}

impl Settings {
    fn from_request(req: &Request) -> Result<Settings, OverlayError> {
        let conf: OverlayConfIn = req
            .parse_config()
            .map_err(|e| OverlayError::InvalidConfig(e.to_string()))?;
        Ok(Settings {
            run_dir: conf
                .run_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_DIR)),
            state_dir: conf
                .state_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
                .join(&req.config.name),
            chained: Chained::from_request(req).map_err(OverlayError::InvalidConfig)?,
        })
    }

    fn state_file(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.state_dir.join(format!("{container_id}:{ifname}.json"))
    }
}

/// The cni-bridge configuration for this request. Keys the operator set (bridge name, hairpin,
/// ipam `dataDir`...) are kept; facts, when known, fill the subnet, routes and MTU.
pub fn delegate_config(req: &Request, facts: Option<&NodeFacts>) -> Value {
    let mut conf: Map<String, Value> = req.raw_config.clone();
    conf.retain(|key, _| {
        !matches!(key.as_str(), "runDir" | "stateDir") && !chained::is_step_key(key)
    });
    conf.insert("type".into(), json!(DELEGATE));
    for (key, value) in [
        ("bridge", json!(BRIDGE)),
        ("isGateway", json!(true)),
        ("isDefaultGateway", json!(true)),
        // Each pod is a routed link of its own (see cni-bridge's `routed`): Service and hostPort
        // DNAT to a pod of the same node, hairpin and NetworkPolicies work alike whatever
        // br_netfilter says. `"routed": false` in the conflist gives plain bridge ports.
        ("routed", json!(true)),
        // Only for bridge ports: hairpin through a Service with `"routed": false`.
        ("hairpinMode", json!(true)),
        ("ipMasq", json!(false)),
    ] {
        conf.entry(key).or_insert(value);
    }
    let mut ipam = match conf.remove("ipam") {
        Some(Value::Object(map)) => map,
        _ => Map::new(),
    };
    ipam.entry("type").or_insert(json!(DEFAULT_IPAM));
    if let Some(facts) = facts {
        conf.entry("mtu").or_insert(json!(facts.mtu));
        let ranges: Vec<Value> = facts
            .subnets
            .iter()
            .map(|s| json!([{"subnet": s.to_string()}]))
            .collect();
        ipam.insert("ranges".into(), Value::Array(ranges));
        let routes: Vec<Value> = facts
            .cluster_cidrs
            .iter()
            .map(|c| json!({"dst": c.to_string()}))
            .collect();
        ipam.insert("routes".into(), Value::Array(routes));
    }
    conf.insert("ipam".into(), Value::Object(ipam));
    Value::Object(conf)
}

/// The saved delegate configuration with this request's version, prevResult and runtime data.
fn saved_config(req: &Request, path: &Path) -> Option<Value> {
    let mut saved: Map<String, Value> = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    for key in ["cniVersion", "prevResult", "runtimeConfig", "args"] {
        match req.raw_config.get(key) {
            Some(value) => saved.insert(key.into(), value.clone()),
            None => saved.remove(key),
        };
    }
    Some(Value::Object(saved))
}

pub struct OverlayPlugin;

impl Plugin for OverlayPlugin {
    type Error = OverlayError;

    fn add(&self, req: &Request) -> Result<CniResult, OverlayError> {
        let settings = Settings::from_request(req)?;
        let facts = NodeFacts::read(&settings.run_dir).map_err(|e| match e {
            FactsError::Missing { .. } => OverlayError::NotReady(e),
            other => OverlayError::Facts(other),
        })?;
        let conf = delegate_config(req, Some(&facts));
        let state = settings.state_file(&req.container_id, &req.ifname);
        // Saved before the delegate acts, so that a DEL always finds what this ADD may have
        // made. Renamed into place, not flushed: a process killed at any point leaves the old
        // file or the new one, and only a power loss (which takes the node's pods with it) can
        // leave it empty or missing, when DEL works the configuration out again from the facts.
        std::fs::create_dir_all(&settings.state_dir)
            .and_then(|()| write_replace(&state, &serde_json::to_vec(&conf).unwrap_or_default()))
            .map_err(|source| OverlayError::State {
                path: state.clone(),
                source,
            })?;
        let undo_state = || {
            if let Err(undo) = remove_if_exists(&state) {
                tracing::warn!(error = %undo, path = %state.display(), "removing the saved delegate configuration");
            }
        };
        let result = match DELEGATES.invoke(req, DELEGATE, Command::Add, &conf) {
            Ok(result) => result.unwrap_or_default(),
            Err(e) => {
                // The delegate undid its part; nothing is left for a DEL to find.
                undo_state();
                return Err(e.into());
            }
        };
        settings.chained.add(req, result).map_err(|e| {
            // The chained plugins undid theirs; the bridge's goes too, then its record.
            match DELEGATES.invoke(req, DELEGATE, Command::Del, &conf) {
                Ok(_) => undo_state(),
                Err(undo) => {
                    tracing::warn!(error = %cni_core::error::chain(&undo), "undoing the bridge after a chained plugin failed")
                }
            }
            e.into()
        })
    }

    fn del(&self, req: &Request) -> Result<(), OverlayError> {
        let settings = Settings::from_request(req)?;
        let state = settings.state_file(&req.container_id, &req.ifname);
        let conf = saved_config(req, &state).unwrap_or_else(|| {
            let facts = NodeFacts::read(&settings.run_dir).ok();
            delegate_config(req, facts.as_ref())
        });
        settings.chained.del(req)?;
        DELEGATES.invoke(req, DELEGATE, Command::Del, &conf)?;
        remove_if_exists(&state).map_err(|source| OverlayError::State {
            path: state,
            source,
        })
    }

    fn check(&self, req: &Request) -> Result<(), OverlayError> {
        let settings = Settings::from_request(req)?;
        let state = settings.state_file(&req.container_id, &req.ifname);
        let conf = match saved_config(req, &state) {
            Some(conf) => conf,
            None => {
                let facts = NodeFacts::read(&settings.run_dir).map_err(OverlayError::Facts)?;
                delegate_config(req, Some(&facts))
            }
        };
        DELEGATES.invoke(req, DELEGATE, Command::Check, &conf)?;
        settings.chained.verify(req, Command::Check)?;
        Ok(())
    }

    fn gc(&self, req: &Request, valid: &[Attachment]) -> Result<(), OverlayError> {
        let settings = Settings::from_request(req)?;
        let facts = NodeFacts::read(&settings.run_dir).ok();
        let mut failures: Failures<OverlayError> = Failures::new("GC step");
        failures.note(DELEGATES.invoke(
            req,
            DELEGATE,
            Command::Gc,
            &delegate_config(req, facts.as_ref()),
        ));
        for outcome in settings.chained.gc(req) {
            failures.note(outcome);
        }
        let keep: HashSet<String> = valid
            .iter()
            .map(|a| format!("{}:{}.json", a.container_id, a.ifname))
            .collect();
        if let Ok(entries) = std::fs::read_dir(&settings.state_dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.ends_with(".json") && !keep.contains(&name) {
                    let path = entry.path();
                    failures.note(
                        remove_if_exists(&path)
                            .map_err(|source| OverlayError::State { path, source }),
                    );
                }
            }
        }
        failures.finish_with(OverlayError::Several)
    }

    fn status(&self, req: &Request) -> Result<(), OverlayError> {
        let settings = Settings::from_request(req)?;
        let facts = NodeFacts::read(&settings.run_dir).map_err(OverlayError::NotAvailable)?;
        DELEGATES.invoke(
            req,
            DELEGATE,
            Command::Status,
            &delegate_config(req, Some(&facts)),
        )?;
        settings.chained.verify(req, Command::Status)?;
        Ok(())
    }
}
