//! The names a registry's metrics are exposed under (what a Prometheus query names): for the
//! checks that alerts and dashboards name only metrics the daemons export.

use prometheus_client::registry::Registry;

/// Every sample name `registry` exposes: a counter `x` as `x_total`, a histogram `x` as
/// `x_bucket`, `x_sum` and `x_count`, a gauge `x` as `x`. A family shows only once it has a
/// sample: give each one first.
pub fn exposed_names(registry: &Registry) -> Vec<String> {
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, registry).is_err() {
        return Vec::new();
    }
    let mut names = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if (words.next(), words.next()) != (Some("#"), Some("TYPE")) {
            continue;
        }
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        match kind {
            "counter" => names.push(format!("{name}_total")),
            "histogram" => {
                for suffix in ["bucket", "sum", "count"] {
                    names.push(format!("{name}_{suffix}"));
                }
            }
            _ => names.push(name.to_string()),
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::{counter::Counter, gauge::Gauge, histogram::Histogram};

    #[test]
    fn counters_histograms_and_gauges_get_their_sample_names() {
        let mut r = Registry::default();
        r.register("a", "a counter", Counter::<u64>::default());
        r.register("b", "a gauge", Gauge::<i64>::default());
        r.register("c", "a histogram", Histogram::new([1.0]));
        assert_eq!(
            exposed_names(&r),
            ["a_total", "b", "c_bucket", "c_sum", "c_count"]
        );
    }
}
