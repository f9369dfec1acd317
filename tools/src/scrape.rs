//! Reading a Prometheus text exposition, for the end-to-end tests and the benchmark: one
//! number from a `/metrics` answer. Not a general parser — it reads the sample lines
//! Hookline writes (no timestamps are needed, exemplars never appear) — but it reads
//! label values as the format quotes them, so a route label such as
//! `route="/v1/tenants/{tenant}/events"` does not end the label set early, which the
//! regex-based crates on crates.io get wrong.

/// The sum of the samples of metric `name` whose labels include every one of `labels`
/// (all of its series when `labels` is empty); 0 when there are none.
pub fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter_map(sample)
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(key, value)| s.labels.iter().any(|(k, v)| k == key && v == value))
        })
        .map(|s| s.value)
        .sum()
}

struct Sample<'a> {
    name: &'a str,
    labels: Vec<(&'a str, String)>,
    value: f64,
}

/// One sample line — `name{key="value",…} value [timestamp]` — or `None` for comments,
/// blank lines and anything malformed.
fn sample(line: &str) -> Option<Sample<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let (name, mut rest) = line.split_at(name_end);
    let mut labels = Vec::new();
    if let Some(mut inside) = rest.strip_prefix('{') {
        loop {
            inside = inside.trim_start_matches([' ', ',']);
            if let Some(after) = inside.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after_key) = inside.split_once('=')?;
            let (value, after_value) = quoted(after_key.trim_start().strip_prefix('"')?)?;
            labels.push((key.trim(), value));
            inside = after_value;
        }
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        number => number.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// A label value up to its closing quote, with `\\`, `\"` and `\n` unescaped, and what
/// follows the quote.
fn quoted(text: &str) -> Option<(String, &str)> {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((index, c)) = chars.next() {
        match c {
            '"' => return Some((value, &text[index + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => value.push('\n'),
                escaped => value.push(escaped),
            },
            c => value.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::sum;

    const TEXT: &str = r#"# HELP hookline_delivery_attempts_total Attempts.
# TYPE hookline_delivery_attempts_total counter
hookline_delivery_attempts_total{outcome="success",status_class="2xx"} 7
hookline_delivery_attempts_total{outcome="circuit_open",status_class="none"} 3
hookline_delivery_attempts_total{outcome="rate_limited",status_class="none"} 2
hookline_delivery_attempts_total_extra 100
hookline_events_consumed_total 12
hookline_http_requests_total{route="/v1/tenants/{tenant}/events",method="POST",class="2xx"} 5
hookline_odd{note="a \"quoted\", {braced} value"} 1.5
hookline_seconds_bucket{le="+Inf"} 4
hookline_broken{outcome="unterminated} 9
"#;

    /// A metric, the labels asked for, and the sum expected.
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], f64);

    #[test]
    fn reads_the_samples_a_metric_and_its_labels_select() {
        let cases: &[Case] = &[
            ("hookline_delivery_attempts_total", &[], 12.0),
            (
                "hookline_delivery_attempts_total",
                &[("outcome", "circuit_open")],
                3.0,
            ),
            (
                "hookline_delivery_attempts_total",
                &[("outcome", "rate_limited"), ("status_class", "none")],
                2.0,
            ),
            (
                "hookline_delivery_attempts_total",
                &[("outcome", "circuit")],
                0.0,
            ),
            ("hookline_events_consumed_total", &[], 12.0),
            (
                "hookline_http_requests_total",
                &[("route", "/v1/tenants/{tenant}/events")],
                5.0,
            ),
            (
                "hookline_odd",
                &[("note", r#"a "quoted", {braced} value"#)],
                1.5,
            ),
            ("hookline_seconds_bucket", &[("le", "+Inf")], 4.0),
            ("hookline_broken", &[], 0.0),
            ("hookline_absent", &[], 0.0),
        ];
        for (name, labels, expected) in cases {
            assert_eq!(sum(TEXT, name, labels), *expected, "{name} {labels:?}");
        }
    }
}
