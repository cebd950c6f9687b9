//! Job validation and defaulting of the newer Job fields through the real kubectl: the 422s
//! upstream answers for a podFailurePolicy without `restartPolicy: Never` and per-index
//! limits on a NonIndexed Job, and upstream's defaults for what the controller reads.

mod common;

use common::{json, TestServer};

fn job(name: &str, restart: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n{extra_spec}  template:\n    spec:\n      restartPolicy: {restart}\n      containers:\n      - name: main\n        image: kaze/busybox:1\n"
    )
}

const FAIL_JOB_ON_42: &str = "  podFailurePolicy:\n    rules:\n    - action: FailJob\n      onExitCodes:\n        containerName: main\n        operator: In\n        values: [42]\n";

#[test]
fn pod_failure_policy_needs_restart_policy_never() {
    let s = TestServer::start();
    let err = s.kubectl_fails(
        &["create", "-f", "-"],
        Some(&job("pfp", "OnFailure", FAIL_JOB_ON_42)),
    );
    assert!(
        err.contains(r#"The Job "pfp" is invalid: spec.template.spec.restartPolicy: Invalid value: "OnFailure": only "Never" is supported when podFailurePolicy is specified"#),
        "{err}"
    );
    s.kubectl_fails(&["get", "job", "pfp"], None);

    s.kubectl_stdin(
        &["create", "-f", "-"],
        Some(&job("pfp", "Never", FAIL_JOB_ON_42)),
    );
    let spec = &json(&s, &["get", "job", "pfp"])["spec"];
    assert_eq!(spec["podReplacementPolicy"], "Failed");
    assert_eq!(spec["backoffLimit"], 6);
}

#[test]
fn per_index_limits_need_indexed_completion_mode() {
    let s = TestServer::start();
    let err = s.kubectl_fails(
        &["create", "-f", "-"],
        Some(&job("flat", "Never", "  backoffLimitPerIndex: 1\n")),
    );
    assert!(
        err.contains(r#"The Job "flat" is invalid: spec.backoffLimitPerIndex: Invalid value: 1: requires indexed completion mode"#),
        "{err}"
    );

    let indexed = "  completionMode: Indexed\n  completions: 3\n  backoffLimitPerIndex: 1\n";
    s.kubectl_stdin(&["create", "-f", "-"], Some(&job("per", "Never", indexed)));
    let spec = &json(&s, &["get", "job", "per"])["spec"];
    // Upstream: with a per-index limit the Job-wide backoffLimit defaults to MaxInt32.
    assert_eq!(spec["backoffLimit"], 2_147_483_647);
    assert_eq!(spec["podReplacementPolicy"], "TerminatingOrFailed");
}
