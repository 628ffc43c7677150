//! The few numbers tetherctl reads from an agent's `/metrics` (Prometheus text): the value of a
//! sample, summed over its label sets.

/// The sum of the samples named `name` (any labels); None when there is none.
pub fn value(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let value = match rest.chars().next() {
            Some('{') => rest.rsplit_once('}').map(|(_, v)| v),
            Some(' ') => Some(rest),
            _ => None,
        };
        if let Some(v) = value.and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok()) {
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_found_by_exact_name_and_summed_over_labels() {
        let text = "# TYPE a gauge\na 3\na_total 9\nb{x=\"1\"} 2\nb{x=\"2\"} 5 1700000000\n";
        assert_eq!(value(text, "a"), Some(3.0));
        assert_eq!(value(text, "a_total"), Some(9.0));
        assert_eq!(value(text, "b"), Some(7.0));
        assert_eq!(value(text, "c"), None);
    }
}
