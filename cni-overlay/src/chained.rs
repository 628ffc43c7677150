//! hostPorts and bandwidth in cni-overlay's own call. A conflist entry of cni-overlay with a
//! `portmap` and/or `bandwidth` object (their plugins' options; `{}` for the defaults) runs
//! cni-portmap and cni-bandwidth in-process after cni-bridge, exactly as a runtime would run
//! them as the next entries of the list: same configuration (the list's name and version, the
//! runtime data of their capability as `runtimeConfig`, the previous result as `prevResult`),
//! same order (ADD and CHECK forward, DEL backward, stopping at the first failure as libcni
//! does), same results. The conflist saves two plugin processes per verb (a process costs about
//! a millisecond, most of a pod's network set-up). The entry then declares the capabilities
//! `portMappings` and `bandwidth` itself. Without those objects nothing runs here, and the
//! separate plugins can be chained as before.

use cni_core::delegate::{DelegateError, Delegates};
use cni_core::{CniResult, Command, Request};
use serde_json::{json, Map, Value};

/// The plugins that can follow cni-bridge in-process: (conflist key, plugin, capability).
const STEPS: [(&str, &str, &str); 2] = [
    ("portmap", "cni-portmap", "portMappings"),
    ("bandwidth", "cni-bandwidth", "bandwidth"),
];

const LINKED: Delegates = Delegates::linking(&[
    ("cni-portmap", &cni_portmap::PortmapPlugin),
    ("cni-bandwidth", &cni_bandwidth::BandwidthPlugin),
]);

/// The conflist keys that configure a chained plugin (not the bridge's).
pub fn is_step_key(key: &str) -> bool {
    STEPS.iter().any(|(k, _, _)| *k == key)
}

/// The plugins this request's entry enables, in ADD order.
pub struct Chained {
    steps: Vec<Step>,
}

struct Step {
    plugin: &'static str,
    capability: &'static str,
    options: Map<String, Value>,
}

impl Chained {
    /// The steps the entry enables; an option that is not an object is an error of the entry.
    pub fn from_request(req: &Request) -> Result<Chained, String> {
        let mut steps = Vec::new();
        for (key, plugin, capability) in STEPS {
            match req.raw_config.get(key) {
                None | Some(Value::Null) => {}
                Some(Value::Object(options)) => steps.push(Step {
                    plugin,
                    capability,
                    options: options.clone(),
                }),
                Some(other) => {
                    return Err(format!(
                        "{key} must be an object of {plugin}'s options, not {other}"
                    ))
                }
            }
        }
        Ok(Chained { steps })
    }

    /// The step's configuration as a runtime would give it: its options, the list's name and
    /// version, its capability's runtime data, the previous result (and a GC's valid list).
    fn config(&self, step: &Step, req: &Request, prev: Option<&Value>) -> Value {
        let mut conf = step.options.clone();
        conf.insert("type".into(), json!(step.plugin));
        conf.insert("name".into(), json!(req.config.name));
        for key in ["cniVersion", "args", "cni.dev/valid-attachments"] {
            if let Some(value) = req.raw_config.get(key) {
                conf.insert(key.into(), value.clone());
            }
        }
        if let Some(data) = req
            .raw_config
            .get("runtimeConfig")
            .and_then(|rc| rc.get(step.capability))
        {
            conf.insert(
                "runtimeConfig".into(),
                json!({ step.capability: data.clone() }),
            );
        }
        if let Some(prev) = prev {
            conf.insert("prevResult".into(), prev.clone());
        }
        Value::Object(conf)
    }

    /// ADD of each step after the bridge's `result`; the last result. A step that fails has
    /// undone itself; the steps before it are deleted again here (backward), and the error is
    /// returned for the caller to undo the bridge.
    pub fn add(&self, req: &Request, result: CniResult) -> Result<CniResult, DelegateError> {
        let mut result = result;
        for (done, step) in self.steps.iter().enumerate() {
            let prev = result.to_value(req.version);
            match LINKED.invoke(
                req,
                step.plugin,
                Command::Add,
                &self.config(step, req, Some(&prev)),
            ) {
                Ok(next) => result = next.unwrap_or_default(),
                Err(e) => {
                    for step in self.steps[..done].iter().rev() {
                        let conf = self.config(step, req, Some(&prev));
                        if let Err(undo) = LINKED.invoke(req, step.plugin, Command::Del, &conf) {
                            tracing::warn!(plugin = step.plugin, error = %cni_core::error::chain(&undo), "undoing a chained ADD");
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(result)
    }

    /// DEL of each step, backward, with the runtime's cached result; stops at the first
    /// failure, as a runtime stops a list's DEL (what follows, the bridge, keeps the pod's
    /// address leased until the retried DEL gets through).
    pub fn del(&self, req: &Request) -> Result<(), DelegateError> {
        let prev = req.raw_config.get("prevResult");
        for step in self.steps.iter().rev() {
            LINKED.invoke(
                req,
                step.plugin,
                Command::Del,
                &self.config(step, req, prev),
            )?;
        }
        Ok(())
    }

    /// CHECK or STATUS of each step, forward, stopping at the first failure.
    pub fn verify(&self, req: &Request, command: Command) -> Result<(), DelegateError> {
        let prev = req.raw_config.get("prevResult");
        for step in &self.steps {
            LINKED.invoke(req, step.plugin, command, &self.config(step, req, prev))?;
        }
        Ok(())
    }

    /// GC of each step, each whatever the others gave.
    pub fn gc(&self, req: &Request) -> Vec<Result<(), DelegateError>> {
        self.steps
            .iter()
            .map(|step| {
                LINKED
                    .invoke(req, step.plugin, Command::Gc, &self.config(step, req, None))
                    .map(drop)
            })
            .collect()
    }
}
