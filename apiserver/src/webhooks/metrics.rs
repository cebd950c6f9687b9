//! Upstream's webhook admission metrics on `/metrics`:
//! `apiserver_admission_webhook_request_total`, `..._admission_duration_seconds`,
//! `..._rejection_count` and `..._fail_open_count`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

/// Upstream's buckets for `apiserver_admission_webhook_admission_duration_seconds`.
const BUCKETS: [f64; 8] = [0.005, 0.025, 0.1, 0.5, 1.0, 2.5, 10.0, 25.0];

/// (name, operation, type: `admit`|`validating`, rejected)
type Key = (String, String, &'static str, bool);

#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// (key, code) → calls
    requests: BTreeMap<(Key, u16), u64>,
    /// key → (bucket counts, sum, count)
    durations: BTreeMap<Key, (Vec<u64>, f64, u64)>,
    /// (name, operation, type, error_type, rejection_code) → rejections
    rejections: BTreeMap<(String, String, &'static str, &'static str, u16), u64>,
    /// (name, type) → calls that failed and were ignored
    fail_open: BTreeMap<(String, &'static str), u64>,
}

/// How one call ended.
pub enum Outcome {
    Allowed,
    /// Denied with this code.
    Denied(u16),
    /// The call failed; `true`: under `failurePolicy: Fail`.
    Failed(bool),
}

impl Metrics {
    pub fn observe(
        &self,
        name: &str,
        operation: &str,
        mutating: bool,
        outcome: Outcome,
        secs: f64,
    ) {
        let ty = if mutating { "admit" } else { "validating" };
        let (code, rejected) = match outcome {
            Outcome::Allowed => (200, false),
            Outcome::Denied(_) => (200, true),
            Outcome::Failed(closed) => (0, closed),
        };
        let key: Key = (name.to_string(), operation.to_string(), ty, rejected);
        let mut m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        *m.requests.entry((key.clone(), code)).or_default() += 1;
        let h = m
            .durations
            .entry(key)
            .or_insert_with(|| (vec![0; BUCKETS.len()], 0.0, 0));
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                h.0[i] += 1;
            }
        }
        h.1 += secs;
        h.2 += 1;
        let rejection = match outcome {
            Outcome::Denied(code) => Some(("no_error", code)),
            Outcome::Failed(true) => Some(("calling_webhook_error", 0)),
            _ => None,
        };
        if let Some((error_type, code)) = rejection {
            let k = (
                name.to_string(),
                operation.to_string(),
                ty,
                error_type,
                code,
            );
            *m.rejections.entry(k).or_default() += 1;
        }
        if matches!(outcome, Outcome::Failed(false)) {
            *m.fail_open.entry((name.to_string(), ty)).or_default() += 1;
        }
    }

    pub fn render(&self) -> String {
        let m = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        let labels = |(name, op, ty, rejected): &Key| {
            format!("name=\"{name}\",operation=\"{op}\",rejected=\"{rejected}\",type=\"{ty}\"")
        };
        out.push_str("# HELP apiserver_admission_webhook_request_total Admission webhook request total, identified by name and broken out for each admission type (validating or mutating) and operation. Additional labels specify whether the request was rejected or not and an HTTP status code. Codes greater than 600 are truncated to 600, to keep the metrics cardinality bounded.\n# TYPE apiserver_admission_webhook_request_total counter\n");
        for ((key, code), n) in &m.requests {
            let _ = writeln!(
                out,
                "apiserver_admission_webhook_request_total{{code=\"{code}\",{}}} {n}",
                labels(key)
            );
        }
        out.push_str("# HELP apiserver_admission_webhook_admission_duration_seconds Admission webhook latency histogram in seconds, identified by name and broken out for each operation and API resource and type (validate or admit).\n# TYPE apiserver_admission_webhook_admission_duration_seconds histogram\n");
        for (key, (counts, sum, count)) in &m.durations {
            let l = labels(key);
            for (b, c) in BUCKETS.iter().zip(counts) {
                let _ = writeln!(
                    out,
                    "apiserver_admission_webhook_admission_duration_seconds_bucket{{{l},le=\"{b}\"}} {c}"
                );
            }
            let _ = writeln!(out, "apiserver_admission_webhook_admission_duration_seconds_bucket{{{l},le=\"+Inf\"}} {count}");
            let _ = writeln!(
                out,
                "apiserver_admission_webhook_admission_duration_seconds_sum{{{l}}} {sum}"
            );
            let _ = writeln!(
                out,
                "apiserver_admission_webhook_admission_duration_seconds_count{{{l}}} {count}"
            );
        }
        out.push_str("# HELP apiserver_admission_webhook_rejection_count Admission webhook rejection count, identified by name and broken out for each admission type (validating or admit) and operation. Additional labels specify an error type (calling_webhook_error or apiserver_internal_error if an error occurred; no_error otherwise) and optionally a non-zero rejection code if the webhook rejects the request with an HTTP status code (honored by the apiserver when the code is greater or equal to 400). Codes greater than 600 are truncated to 600, to keep the metrics cardinality bounded.\n# TYPE apiserver_admission_webhook_rejection_count counter\n");
        for ((name, op, ty, error_type, code), n) in &m.rejections {
            let _ = writeln!(
                out,
                "apiserver_admission_webhook_rejection_count{{error_type=\"{error_type}\",name=\"{name}\",operation=\"{op}\",rejection_code=\"{code}\",type=\"{ty}\"}} {n}"
            );
        }
        out.push_str("# HELP apiserver_admission_webhook_fail_open_count Admission webhook fail open count, identified by name and broken out for each admission type (validating or mutating).\n# TYPE apiserver_admission_webhook_fail_open_count counter\n");
        for ((name, ty), n) in &m.fail_open {
            let _ = writeln!(
                out,
                "apiserver_admission_webhook_fail_open_count{{name=\"{name}\",type=\"{ty}\"}} {n}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_rejections_and_fail_opens_are_counted() {
        let m = Metrics::default();
        m.observe("a.example.com", "CREATE", false, Outcome::Denied(403), 0.01);
        m.observe("a.example.com", "CREATE", false, Outcome::Allowed, 0.2);
        m.observe("b.example.com", "UPDATE", true, Outcome::Failed(false), 1.5);
        let text = m.render();
        for line in [
            "apiserver_admission_webhook_request_total{code=\"200\",name=\"a.example.com\",operation=\"CREATE\",rejected=\"true\",type=\"validating\"} 1",
            "apiserver_admission_webhook_request_total{code=\"200\",name=\"a.example.com\",operation=\"CREATE\",rejected=\"false\",type=\"validating\"} 1",
            "apiserver_admission_webhook_request_total{code=\"0\",name=\"b.example.com\",operation=\"UPDATE\",rejected=\"false\",type=\"admit\"} 1",
            "apiserver_admission_webhook_rejection_count{error_type=\"no_error\",name=\"a.example.com\",operation=\"CREATE\",rejection_code=\"403\",type=\"validating\"} 1",
            "apiserver_admission_webhook_fail_open_count{name=\"b.example.com\",type=\"admit\"} 1",
            "apiserver_admission_webhook_admission_duration_seconds_bucket{name=\"b.example.com\",operation=\"UPDATE\",rejected=\"false\",type=\"admit\",le=\"2.5\"} 1",
            "apiserver_admission_webhook_admission_duration_seconds_bucket{name=\"b.example.com\",operation=\"UPDATE\",rejected=\"false\",type=\"admit\",le=\"1\"} 0",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
    }
}
