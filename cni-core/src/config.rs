//! The parts of a network configuration that every plugin shares.
//!
//! Plugins parse their own fields from the raw object (see [`crate::Request::parse_config`]);
//! the raw object is kept whole so that unknown keys survive and can be handed to delegates.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Value>,
    #[serde(rename = "runtimeConfig", default)]
    pub runtime_config: Map<String, Value>,
    #[serde(default)]
    pub args: Map<String, Value>,
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// The key GC used before the 1.1.0 spec settled on `cni.dev/valid-attachments`.
    #[serde(rename = "cni.dev/attachments", default)]
    pub attachments: Option<Vec<Attachment>>,
    /// Optional log file for this plugin's `tracing` output (stderr otherwise).
    #[serde(rename = "logFile", default)]
    pub log_file: Option<String>,
    /// `error`, `warn` (default), `info`, `debug` or `trace`.
    #[serde(rename = "logLevel", default)]
    pub log_level: Option<String>,
    /// `text` (default) or `json`.
    #[serde(rename = "logFormat", default)]
    pub log_format: Option<String>,
}

/// One attachment the runtime still considers alive (GC input).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

impl NetConf {
    /// The attachments GC must keep, from whichever key the runtime used.
    pub fn gc_valid_attachments(&self) -> Vec<Attachment> {
        self.valid_attachments
            .clone()
            .or_else(|| self.attachments.clone())
            .unwrap_or_default()
    }
}

/// The longest network name: it becomes a directory name and part of interface aliases (255
/// bytes with a container ID and an interface name).
pub const MAX_NETWORK_NAME: usize = 64;
/// The longest container ID: it becomes part of lease index entries (255-byte file names) and
/// interface aliases. Runtimes use 64 hex digits.
pub const MAX_CONTAINER_ID: usize = 128;

/// Renames the keys of `value` (an object, or objects in a list) that match one of `fields`
/// case-insensitively to that field, as Go's JSON decoding matches them: runtimes written in
/// Go send capability data from structs without JSON tags (containerd's `{"HostPort": 8080}`
/// for `portMappings`, `{"IngressRate": ...}` for `bandwidth`), and every Go plugin reads those.
pub fn fold_keys(value: &mut Value, fields: &[&str]) {
    match value {
        Value::Array(items) => items.iter_mut().for_each(|item| fold_keys(item, fields)),
        Value::Object(map) => {
            let keys: Vec<String> = map.keys().cloned().collect();
            for key in keys {
                if fields.contains(&key.as_str()) {
                    continue;
                }
                if let Some(field) = fields.iter().find(|f| f.eq_ignore_ascii_case(&key)) {
                    if !map.contains_key(*field) {
                        if let Some(v) = map.remove(&key) {
                            map.insert((*field).to_string(), v);
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

/// Network names become directory names: same rule as the spec (alphanumeric first, then
/// alphanumerics, `_`, `.`, `-`), which also keeps `..` and `/` out.
pub fn is_valid_network_name(name: &str) -> bool {
    is_valid_identifier(name)
}

/// Container IDs follow the same rule as network names in the reference runtime code.
pub fn is_valid_container_id(id: &str) -> bool {
    is_valid_identifier(id)
}

/// A shortened form of `text` that fits in `max` bytes, the same every time: the text itself
/// when it fits, else a prefix and a hash of the whole (nftables comments hold 128 bytes).
pub fn fit(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let hash = format!("~{:016x}", crate::names::hash64(text.bytes()));
    let mut cut = max.saturating_sub(hash.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{hash}", &text[..cut])
}

fn is_valid_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphanumeric() => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Linux interface names: 1-15 bytes, no `/`, `:` or whitespace, not `.` or `..`.
pub fn is_valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ids_reject_path_tricks() {
        assert!(is_valid_network_name("tether-pods.v1_a"));
        for bad in ["", "../etc", "a/b", ".hidden", "-x", "a b", "a\0b"] {
            assert!(!is_valid_network_name(bad), "{bad:?}");
        }
        assert!(is_valid_container_id("0123abcdef"));
        assert!(!is_valid_container_id("abc/../../x"));
    }

    #[test]
    fn interface_names() {
        assert!(is_valid_ifname("eth0"));
        assert!(is_valid_ifname("eth0.100"));
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "sixteen-chars-xx"] {
            assert!(!is_valid_ifname(bad), "{bad:?}");
        }
    }

    #[test]
    fn go_style_keys_fold_to_the_plugin_fields() {
        let mut v =
            serde_json::json!([{"HostPort": 8080, "containerport": 80, "hostPort": 1, "Other": 2}]);
        fold_keys(&mut v, &["hostPort", "containerPort"]);
        assert_eq!(
            v,
            serde_json::json!([{"HostPort": 8080, "containerPort": 80, "hostPort": 1, "Other": 2}]),
            "an exact key wins; the others fold"
        );
    }

    #[test]
    fn gc_attachments_from_either_key() {
        let new: NetConf = serde_json::from_value(serde_json::json!({
            "cniVersion": "1.1.0", "name": "n", "type": "t",
            "cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]
        }))
        .unwrap();
        assert_eq!(new.gc_valid_attachments().len(), 1);
        let old: NetConf = serde_json::from_value(serde_json::json!({
            "cniVersion": "1.1.0", "name": "n", "type": "t",
            "cni.dev/attachments": [{"containerID": "b", "ifname": "eth1"}]
        }))
        .unwrap();
        assert_eq!(old.gc_valid_attachments()[0].container_id, "b");
    }
}
