//! Versions of one resource that share storage: `events.k8s.io/v1` Events are stored in
//! their `core/v1` form (as upstream does), so events written through either API are read
//! through both — kubectl describe lists what kube-rs's event recorder writes;
//! `autoscaling/v1` HorizontalPodAutoscalers are stored as `autoscaling/v2` ones ([`hpa`]).

use serde_json::{json, Map, Value};

mod hpa;

/// How a served version maps to the stored form.
#[derive(Debug, Clone, Copy)]
pub struct Conversion {
    pub to_storage: fn(Value) -> Value,
    pub from_storage: fn(Value) -> Value,
    /// The group of the version it is stored as (whose store holds it).
    pub storage_group: &'static str,
}

/// events.k8s.io/v1 field <-> core/v1 field; fields not listed have the same name in both.
const EVENT_FIELDS: &[(&str, &str)] = &[
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn rename(
    v: Value,
    pairs: impl Iterator<Item = (&'static str, &'static str)>,
    api_version: &str,
) -> Value {
    let Value::Object(mut m) = v else { return v };
    let mut out = Map::new();
    for (from, to) in pairs {
        if let Some(x) = m.remove(from) {
            out.insert(to.to_string(), x);
        }
    }
    out.extend(m);
    out.insert("apiVersion".into(), json!(api_version));
    Value::Object(out)
}

fn event_to_core(v: Value) -> Value {
    rename(v, EVENT_FIELDS.iter().copied(), "v1")
}

fn event_from_core(v: Value) -> Value {
    rename(
        v,
        EVENT_FIELDS.iter().map(|(a, b)| (*b, *a)),
        "events.k8s.io/v1",
    )
}

pub const EVENTS_V1: Conversion = Conversion {
    to_storage: event_to_core,
    from_storage: event_from_core,
    storage_group: "",
};

pub const HPA_V1: Conversion = Conversion {
    to_storage: hpa::to_v2,
    from_storage: hpa::to_v1,
    storage_group: "autoscaling",
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_between_versions() {
        let ext = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"},
            "regarding": {"kind": "Pod", "name": "p"}, "note": "pulled", "reason": "Pulled", "type": "Normal",
            "reportingController": "kubelet", "eventTime": "2026-01-01T00:00:00.000000Z"});
        let core = event_to_core(ext.clone());
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core["involvedObject"]["name"], "p");
        assert_eq!(core["message"], "pulled");
        assert_eq!(core["reportingComponent"], "kubelet");
        assert!(core.get("note").is_none());
        assert_eq!(event_from_core(core), ext);
    }
}
