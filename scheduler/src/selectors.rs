//! Label selectors, node selector terms and tolerations, with upstream's matching rules.

use std::collections::BTreeMap;

pub type Labels = BTreeMap<String, String>;

/// `metav1.LabelSelector`, node selector terms and tolerations (shared with the
/// controllers).
pub use component::selectors::{
    label_selector_matches, node_selector_term_matches, tolerated, tolerates,
};

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Taint, Toleration};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn label_selectors() {
        let sel = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "NotIn".into(),
                values: Some(vec!["db".into()]),
            }]),
        };
        assert!(label_selector_matches(&sel, &labels(&[("app", "web")])));
        assert!(label_selector_matches(
            &sel,
            &labels(&[("app", "web"), ("tier", "fe")])
        ));
        assert!(!label_selector_matches(
            &sel,
            &labels(&[("app", "web"), ("tier", "db")])
        ));
        assert!(!label_selector_matches(&sel, &labels(&[("app", "api")])));
        assert!(label_selector_matches(
            &LabelSelector::default(),
            &labels(&[])
        ));
    }

    #[test]
    fn tolerations() {
        let taint = Taint {
            key: "dedicated".into(),
            value: Some("gpu".into()),
            effect: "NoSchedule".into(),
            time_added: None,
        };
        let exact = Toleration {
            key: Some("dedicated".into()),
            operator: Some("Equal".into()),
            value: Some("gpu".into()),
            effect: Some("NoSchedule".into()),
            toleration_seconds: None,
        };
        assert!(tolerates(&exact, &taint));
        let wrong_value = Toleration {
            value: Some("cpu".into()),
            ..exact.clone()
        };
        assert!(!tolerates(&wrong_value, &taint));
        let wrong_effect = Toleration {
            effect: Some("NoExecute".into()),
            ..exact.clone()
        };
        assert!(!tolerates(&wrong_effect, &taint));
        let everything = Toleration {
            operator: Some("Exists".into()),
            ..Default::default()
        };
        assert!(tolerates(&everything, &taint));
    }
}
