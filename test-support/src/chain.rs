//! Running a conflist as a runtime does (libcni's rules): each plugin gets its own entry with the
//! list's `name` and `cniVersion`, the runtime data of the capabilities it declares as
//! `runtimeConfig`, and the previous plugin's result as `prevResult`; ADD runs in order, DEL in
//! reverse order with the cached result, CHECK in order with it.

#![allow(clippy::result_large_err)] // A failed step is the whole plugin output, for the test to read.

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::{plugin_output, spawn_plugin_in, Netns, PluginOut};

pub struct Conflist<'a> {
    pub list: Value,
    /// Directories holding the plugin binaries (CNI_PATH).
    pub bin_dirs: Vec<PathBuf>,
    /// Where the plugins run (the node), or the test's own namespace.
    pub node: Option<&'a Netns>,
}

/// One attachment: container id, netns path (empty after the sandbox is gone), interface name.
pub struct Attachment<'a> {
    pub id: &'a str,
    pub netns: &'a str,
    pub ifname: &'a str,
    /// Runtime data by capability: `{"portMappings": [...], "bandwidth": {...}}`.
    pub runtime: Value,
}

impl Conflist<'_> {
    fn plugins(&self) -> Vec<Value> {
        self.list["plugins"].as_array().cloned().unwrap_or_default()
    }

    fn binary(&self, plugin: &str) -> PathBuf {
        self.bin_dirs
            .iter()
            .map(|d| d.join(plugin))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("plugin {plugin} not found in {:?}", self.bin_dirs))
    }

    fn config(&self, plugin: &Value, att: &Attachment<'_>, prev: Option<&Value>) -> Value {
        let mut conf: Map<String, Value> = plugin.as_object().cloned().unwrap_or_default();
        conf.insert("name".into(), self.list["name"].clone());
        conf.insert("cniVersion".into(), self.list["cniVersion"].clone());
        let mut runtime = Map::new();
        if let Some(caps) = plugin["capabilities"].as_object() {
            for (cap, on) in caps {
                if on.as_bool() == Some(true) {
                    if let Some(value) = att.runtime.get(cap) {
                        runtime.insert(cap.clone(), value.clone());
                    }
                }
            }
        }
        conf.remove("capabilities");
        if !runtime.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(runtime));
        }
        if let Some(prev) = prev {
            conf.insert("prevResult".into(), prev.clone());
        }
        Value::Object(conf)
    }

    fn run(
        &self,
        command: &str,
        plugin: &Value,
        att: &Attachment<'_>,
        prev: Option<&Value>,
    ) -> PluginOut {
        plugin_output(self.spawn_plugin(command, plugin, att, prev))
    }

    fn spawn_plugin(
        &self,
        command: &str,
        plugin: &Value,
        att: &Attachment<'_>,
        prev: Option<&Value>,
    ) -> std::process::Child {
        let kind = plugin["type"].as_str().unwrap();
        let path = self
            .bin_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        spawn_plugin_in(
            self.node,
            &self.binary(kind),
            &[
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", att.id),
                ("CNI_NETNS", att.netns),
                ("CNI_IFNAME", att.ifname),
                ("CNI_PATH", &path),
                // Runtimes pass their own environment on; Go plugins find iptables through it.
                ("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            ],
            &self.config(plugin, att, prev),
        )
    }

    /// Starts one verb of the list's plugin number `index` and returns at once (for a test that
    /// signals the plugin); [`plugin_output`] collects it.
    pub fn spawn_one(
        &self,
        command: &str,
        index: usize,
        att: &Attachment<'_>,
        prev: Option<&Value>,
    ) -> std::process::Child {
        self.spawn_plugin(command, &self.plugins()[index], att, prev)
    }

    /// How many plugins the list chains.
    pub fn plugin_count(&self) -> usize {
        self.plugins().len()
    }

    /// Starts GC of the list's plugin number `index` with `valid` (container id, ifname).
    pub fn spawn_gc(&self, index: usize, valid: &[(&str, &str)]) -> std::process::Child {
        let plugin = &self.plugins()[index];
        let att = Attachment {
            id: "",
            netns: "",
            ifname: "",
            runtime: Value::Null,
        };
        let mut conf = self.config(plugin, &att, None);
        conf["cni.dev/valid-attachments"] = Value::Array(
            valid
                .iter()
                .map(|(id, ifname)| json!({"containerID": id, "ifname": ifname}))
                .collect(),
        );
        spawn_plugin_in(
            self.node,
            &self.binary(plugin["type"].as_str().unwrap()),
            &[
                ("CNI_COMMAND", "GC"),
                ("CNI_PATH", &self.bin_dirs[0].display().to_string()),
            ],
            &conf,
        )
    }

    /// One verb of the list's plugin number `index` alone (a runtime retrying one step).
    pub fn run_one(
        &self,
        command: &str,
        index: usize,
        att: &Attachment<'_>,
        prev: Option<&Value>,
    ) -> PluginOut {
        self.run(command, &self.plugins()[index], att, prev)
    }

    /// ADD through the whole list: the final result, or the first failure.
    pub fn add(&self, att: &Attachment<'_>) -> Result<Value, PluginOut> {
        let mut prev: Option<Value> = None;
        for plugin in self.plugins() {
            let out = self.run("ADD", &plugin, att, prev.as_ref());
            if out.code != 0 {
                return Err(out);
            }
            prev = Some(out.json);
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// DEL through the list in reverse order; every plugin runs, the first failure is returned.
    pub fn del(&self, att: &Attachment<'_>, cached: Option<&Value>) -> Result<(), PluginOut> {
        let mut first = None;
        for plugin in self.plugins().iter().rev() {
            let out = self.run("DEL", plugin, att, cached);
            if out.code != 0 && first.is_none() {
                first = Some(out);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// CHECK through the list with the cached result.
    pub fn check(&self, att: &Attachment<'_>, cached: &Value) -> Result<(), PluginOut> {
        for plugin in self.plugins() {
            let out = self.run("CHECK", &plugin, att, Some(cached));
            if out.code != 0 {
                return Err(out);
            }
        }
        Ok(())
    }

    /// GC of every plugin with the attachments still alive.
    pub fn gc(&self, valid: &[(&str, &str)]) -> Result<(), PluginOut> {
        for index in 0..self.plugin_count() {
            let out = plugin_output(self.spawn_gc(index, valid));
            if out.code != 0 {
                return Err(out);
            }
        }
        Ok(())
    }
}

/// The directory holding this test's binaries (target/<triple>/debug).
pub fn bin_dir_of(test_binary: &Path) -> PathBuf {
    let dir = test_binary.parent().unwrap();
    if dir.ends_with("deps") {
        dir.parent().unwrap().to_path_buf()
    } else {
        dir.to_path_buf()
    }
}
