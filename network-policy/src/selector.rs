//! Label selectors as Kubernetes defines them: `matchLabels` and `matchExpressions` (In, NotIn,
//! Exists, DoesNotExist) all hold; an empty selector selects everything. An operator this agent
//! does not know selects nothing (the API server rejects such selectors anyway).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

pub type Labels = BTreeMap<String, String>;

pub fn matches(selector: &LabelSelector, labels: &Labels) -> bool {
    let plain = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    plain
        && selector.match_expressions.iter().flatten().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            let value = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => value.is_some_and(|v| values.contains(v)),
                "NotIn" => value.is_none_or(|v| !values.contains(v)),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(v: serde_json::Value) -> LabelSelector {
        serde_json::from_value(v).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_operator_and_the_empty_selector() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        assert!(matches(&sel(serde_json::json!({})), &l));
        assert!(matches(
            &sel(serde_json::json!({"matchLabels": {"app": "web"}})),
            &l
        ));
        assert!(!matches(
            &sel(serde_json::json!({"matchLabels": {"app": "db"}})),
            &l
        ));
        let expr = |op: &str, values: &[&str]| {
            sel(
                serde_json::json!({"matchExpressions": [{"key": "app", "operator": op, "values": values}]}),
            )
        };
        assert!(matches(&expr("In", &["web", "api"]), &l));
        assert!(!matches(&expr("In", &["db"]), &l));
        assert!(matches(&expr("NotIn", &["db"]), &l));
        assert!(!matches(&expr("NotIn", &["web"]), &l));
        assert!(
            matches(&expr("NotIn", &["web"]), &labels(&[])),
            "NotIn holds without the key"
        );
        assert!(matches(&expr("Exists", &[]), &l));
        assert!(!matches(&expr("DoesNotExist", &[]), &l));
        assert!(matches(&expr("DoesNotExist", &[]), &labels(&[])));
        assert!(!matches(&expr("Sometimes", &[]), &l));
        // Both parts must hold.
        let both = sel(serde_json::json!({"matchLabels": {"tier": "front"},
            "matchExpressions": [{"key": "app", "operator": "In", "values": ["db"]}]}));
        assert!(!matches(&both, &l));
    }
}
