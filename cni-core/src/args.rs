//! `CNI_ARGS`: `KEY=VALUE;KEY=VALUE` pairs from the runtime.

use std::collections::BTreeMap;

/// Keys any Tether plugin understands. Others are an error unless `IgnoreUnknown` is set, as in the
/// reference plugins; containerd and CRI-O always set it.
const KNOWN_KEYS: [&str; 7] = [
    "IgnoreUnknown",
    "IP",
    "MAC",
    "K8S_POD_NAMESPACE",
    "K8S_POD_NAME",
    "K8S_POD_INFRA_CONTAINER_ID",
    "K8S_POD_UID",
];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pairs: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgsError {
    #[error("CNI_ARGS: {0:?} is not a KEY=VALUE pair")]
    NotAPair(String),
    #[error("CNI_ARGS: unknown key {0:?} (set IgnoreUnknown=1 to allow it)")]
    UnknownKey(String),
}

impl CniArgs {
    pub fn parse(raw: &str) -> Result<CniArgs, ArgsError> {
        let mut pairs = BTreeMap::new();
        for item in raw.split(';').filter(|s| !s.is_empty()) {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| ArgsError::NotAPair(item.to_string()))?;
            if key.is_empty() {
                return Err(ArgsError::NotAPair(item.to_string()));
            }
            pairs.insert(key.to_string(), value.to_string());
        }
        let args = CniArgs { pairs };
        if !args.ignore_unknown() {
            if let Some(key) = args
                .pairs
                .keys()
                .find(|k| !KNOWN_KEYS.contains(&k.as_str()))
            {
                return Err(ArgsError::UnknownKey(key.clone()));
            }
        }
        Ok(args)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs.get(key).map(String::as_str)
    }

    fn ignore_unknown(&self) -> bool {
        matches!(
            self.get("IgnoreUnknown")
                .map(str::to_ascii_lowercase)
                .as_deref(),
            Some("1" | "true")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_style_args_are_accepted() {
        let args = CniArgs::parse(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u;FOO=bar",
        )
        .unwrap();
        assert_eq!(args.get("K8S_POD_NAME"), Some("web-0"));
        assert_eq!(args.get("FOO"), Some("bar"));
    }

    #[test]
    fn unknown_keys_need_ignore_unknown() {
        assert_eq!(
            CniArgs::parse("FOO=bar"),
            Err(ArgsError::UnknownKey("FOO".into()))
        );
        assert!(CniArgs::parse("IgnoreUnknown=true;FOO=bar").is_ok());
        assert_eq!(
            CniArgs::parse("IP=10.0.0.5").unwrap().get("IP"),
            Some("10.0.0.5")
        );
        assert_eq!(CniArgs::parse(""), Ok(CniArgs::default()));
    }

    #[test]
    fn malformed_pairs_are_rejected() {
        assert!(matches!(CniArgs::parse("IP"), Err(ArgsError::NotAPair(_))));
        assert!(matches!(CniArgs::parse("=x"), Err(ArgsError::NotAPair(_))));
    }
}
