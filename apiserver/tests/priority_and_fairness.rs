//! API Priority and Fairness applied to requests: classification by FlowSchema (the
//! response headers name the schema and level), a `Reject` level answering 429 past its
//! seats, a `Queue` level holding requests until a seat frees (429 when the queue is full or
//! after the queue wait), upstream's suggested configuration kept, the max-in-flight
//! limits when APF is off, the work estimates (a LIST's seats, a write's seats per ten
//! watches), a busy level borrowing idle levels' seats, the debug dumps, and the metrics
//! of work estimates, watch counts and execution times. Requests are real HTTP (curl) to a
//! real apiserver; a request whose body is still being sent holds its seat, as upstream's
//! does.

mod common;

use std::time::{Duration, Instant};

use common::curl::{
    configmap_requests, curl_cmd, finish, get, get_later, metric, Holder, Reply, CONFIGMAPS,
};
use common::{eventually, json, TestServer};

/// A priority level `level` of `shares` answering past its seats with `response` (and
/// borrowing no seats of other levels, so its limit stays put), a FlowSchema `schema` (at
/// `precedence`) sending every request of `user` to it, and `user` allowed to edit (so its
/// requests get past authorization to read their bodies).
fn user_level(
    s: &TestServer,
    user: &str,
    (level, shares, response): (&str, u32, serde_json::Value),
    (schema, precedence): (&str, u32),
) {
    let limited = serde_json::json!({"nominalConcurrencyShares": shares,
        "borrowingLimitPercent": 0, "limitResponse": response});
    user_level_with(s, user, (level, limited), (schema, precedence));
}

/// [`user_level`] with the level's `limited` spec as given.
fn user_level_with(
    s: &TestServer,
    user: &str,
    (level, limited): (&str, serde_json::Value),
    (schema, precedence): (&str, u32),
) {
    let config = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "PriorityLevelConfiguration",
            "metadata": {"name": level}, "spec": {"type": "Limited", "limited": limited}},
        {"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema",
            "metadata": {"name": schema}, "spec": {"priorityLevelConfiguration": {"name": level},
                "matchingPrecedence": precedence, "rules": [{
                    "subjects": [{"kind": "User", "user": {"name": user}}],
                    "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                        "namespaces": ["*"], "clusterScope": true}]}]}},
    ]});
    s.kubectl_stdin(&["apply", "-f", "-"], Some(&config.to_string()));
    s.kubectl(&[
        "create",
        "clusterrolebinding",
        user,
        "--clusterrole=edit",
        &format!("--user={user}"),
    ]);
    // the binding in force (a request refused by RBAC would give its seat back at once)
    eventually("the user allowed", || {
        get(s, Some(user), CONFIGMAPS).code == 200
    });
}

fn reject() -> serde_json::Value {
    serde_json::json!({"type": "Reject"})
}

fn uid(s: &TestServer, kind: &str, name: &str) -> String {
    json(s, &["get", kind, name, "-o", "json"])["metadata"]["uid"]
        .as_str()
        .expect("a uid")
        .to_string()
}

/// A server with two seats in all and a level of its own for each test user.
fn server() -> TestServer {
    let s = TestServer::start_with(|c| {
        c.max_requests_inflight = 1;
        c.max_mutating_requests_inflight = 1;
    });
    // a level of one seat per test user (two seats in all: every level with shares gets one)
    user_level(&s, "apf-slow", ("tight", 1, reject()), ("slow", 50));
    let queue = serde_json::json!({"type": "Queue",
        "queuing": {"queues": 1, "handSize": 1, "queueLengthLimit": 1}});
    user_level(&s, "apf-queued", ("queued", 1, queue), ("waits", 60));
    let slow = uid(&s, "flowschema", "slow");
    let waits = uid(&s, "flowschema", "waits");
    eventually("the test schemas in force", || {
        get(&s, Some("apf-slow"), CONFIGMAPS).schema_uid() == Some(slow.as_str())
            && get(&s, Some("apf-queued"), CONFIGMAPS).schema_uid() == Some(waits.as_str())
    });
    s
}

#[test]
fn requests_are_classified_and_a_reject_level_refuses_past_its_seats() {
    let s = server();

    // where requests go: the admin (system:masters) is exempt, others fall to global-default
    let classified = |r: &Reply, schema: &str, level: &str| {
        assert_eq!(r.schema_uid(), Some(uid(&s, "flowschema", schema).as_str()));
        let level_uid = uid(&s, "prioritylevelconfiguration", level);
        assert_eq!(r.level_uid(), Some(level_uid.as_str()));
    };
    let admin = get(&s, None, CONFIGMAPS);
    assert_eq!(admin.code, 200);
    classified(&admin, "exempt", "exempt");
    let jane = get(&s, Some("jane"), CONFIGMAPS);
    assert_eq!(jane.code, 403, "jane may not list: {}", jane.body);
    classified(&jane, "global-default", "global-default");
    let tight = uid(&s, "prioritylevelconfiguration", "tight");
    assert_eq!(
        get(&s, Some("apf-slow"), CONFIGMAPS).level_uid(),
        Some(tight.as_str())
    );

    // the level's one seat taken: the next request of its flow is refused at once
    let executing = r#"apiserver_flowcontrol_current_executing_requests{flow_schema="slow",priority_level="tight"}"#;
    let holder = Holder::start(&s, "apf-slow", "held");
    eventually("the holder executing", || metric(&s, executing) == 1.0);
    let refused = get(&s, Some("apf-slow"), CONFIGMAPS);
    assert_eq!(refused.code, 429, "{}", refused.body);
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert_eq!(refused.level_uid(), Some(tight.as_str()));
    let status: serde_json::Value = serde_json::from_str(&refused.body).expect("a Status");
    assert_eq!(status["reason"], "TooManyRequests");
    assert_eq!(
        status["message"],
        "Too many requests, please try again later."
    );
    assert_eq!(status["details"]["retryAfterSeconds"], 1);
    assert_eq!(
        metric(
            &s,
            r#"apiserver_flowcontrol_rejected_requests_total{flow_schema="slow",priority_level="tight",reason="concurrency-limit"}"#
        ),
        1.0
    );
    // other levels are not held up, nor is the admin
    assert_eq!(get(&s, Some("apf-queued"), CONFIGMAPS).code, 200);
    assert_eq!(get(&s, None, CONFIGMAPS).code, 200);
    // the request metrics saw the 429, as ended in self-defense (upstream's
    // RecordRequestTermination)
    let (answered, terminated) = configmap_requests(&s, "LIST", "namespace", 429);
    assert!(
        answered >= 1.0 && terminated >= 1.0,
        "{answered} {terminated}"
    );

    // the seat given back: the flow is served again
    let created = holder.release();
    assert_eq!(created.code, 201, "{}", created.body);
    assert_eq!(metric(&s, executing), 0.0);
    assert_eq!(get(&s, Some("apf-slow"), CONFIGMAPS).code, 200);
    assert_eq!(
        s.kubectl(&["get", "configmap", "held", "-o", "jsonpath={.data.a}"]),
        "b"
    );
}

#[test]
fn a_queue_level_holds_requests_until_a_seat_frees_and_refuses_past_its_queue() {
    let s = server();
    let in_queue = r#"apiserver_flowcontrol_current_inqueue_requests{flow_schema="waits",priority_level="queued"}"#;
    let rejected = |reason: &str| {
        metric(
            &s,
            &format!(
                r#"apiserver_flowcontrol_rejected_requests_total{{flow_schema="waits",priority_level="queued",reason="{reason}"}}"#
            ),
        )
    };
    let holder = Holder::start(&s, "apf-queued", "first");
    eventually("the holder executing", || {
        metric(
            &s,
            r#"apiserver_flowcontrol_current_executing_requests{flow_schema="waits",priority_level="queued"}"#,
        ) == 1.0
    });

    // one waits in the queue (length 1); the next finds it full
    let started = Instant::now();
    let waiting = get_later(&s, "apf-queued", CONFIGMAPS);
    eventually("a request queued", || metric(&s, in_queue) == 1.0);
    let full = get(&s, Some("apf-queued"), CONFIGMAPS);
    assert_eq!(full.code, 429, "{}", full.body);
    assert_eq!(rejected("queue-full"), 1.0);

    // the queued one gives up after the queue wait (15 s)
    let timed_out = finish(waiting);
    let waited = started.elapsed();
    assert_eq!(timed_out.code, 429, "{}", timed_out.body);
    assert!(
        waited >= Duration::from_secs(14) && waited < Duration::from_secs(40),
        "waited {waited:?}"
    );
    assert_eq!(rejected("time-out"), 1.0);
    assert_eq!(metric(&s, in_queue), 0.0);
    // one that asked for a 4 s deadline (kubectl --request-timeout) waits a quarter of it
    let started = Instant::now();
    let short = get(&s, Some("apf-queued"), &format!("{CONFIGMAPS}?timeout=4s"));
    let waited = started.elapsed();
    assert_eq!(short.code, 429, "{}", short.body);
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "waited {waited:?}"
    );
    assert_eq!(rejected("time-out"), 2.0);

    // another waits, and runs as soon as the seat is given back
    let waiting = get_later(&s, "apf-queued", CONFIGMAPS);
    eventually("a request queued again", || metric(&s, in_queue) == 1.0);
    let created = holder.release();
    assert_eq!(created.code, 201, "{}", created.body);
    let served = finish(waiting);
    assert_eq!(served.code, 200, "{}", served.body);
    assert!(served.body.contains("\"first\""), "{}", served.body);
    assert_eq!(metric(&s, in_queue), 0.0);
    assert!(
        metric(
            &s,
            r#"apiserver_flowcontrol_request_wait_duration_seconds_count{execute="true",flow_schema="waits",priority_level="queued"}"#
        ) >= 3.0,
        "the holder, the served waiter and the setup's requests"
    );
}

#[test]
fn the_suggested_configuration_is_created_and_kept() {
    let s = TestServer::start();
    let table = s.kubectl(&["get", "flowschemas"]);
    let names: Vec<&str> = table
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        names,
        [
            "exempt",
            "probes",
            "system-leader-election",
            "endpoint-controller",
            "workload-leader-election",
            "system-node-high",
            "system-nodes",
            "kube-controller-manager",
            "kube-scheduler",
            "kube-system-service-accounts",
            "service-accounts",
            "global-default",
            "catch-all"
        ]
    );
    assert!(
        table.lines().all(|l| !l.ends_with("True")),
        "no suggested schema is dangling:\n{table}"
    );
    let levels = s.kubectl(&["get", "prioritylevelconfigurations", "global-default"]);
    let row: Vec<&str> = levels
        .lines()
        .nth(1)
        .expect("a row")
        .split_whitespace()
        .collect();
    assert_eq!(
        row[..6],
        ["global-default", "Limited", "20", "128", "6", "50"]
    );
    // upstream's default seats: 600 shared by 245 shares
    assert_eq!(
        metric(
            &s,
            r#"apiserver_flowcontrol_nominal_limit_seats{priority_level="global-default"}"#
        ),
        49.0
    );
    // a kubelet's node heartbeat goes to node-high
    let node_high = uid(&s, "flowschema", "system-node-high");
    let as_node = {
        let url = format!("{}/api/v1/nodes/n1", s.server().url());
        let out = curl_cmd(
            &s,
            Some("system:node:n1"),
            &["-H", "Impersonate-Group: system:nodes", &url],
        )
        .output()
        .expect("curl");
        Reply::parse(&out.stdout)
    };
    assert_eq!(as_node.schema_uid(), Some(node_high.as_str()));

    // deleted: back again; changed: put back while autoupdate is on, kept once it is off
    let set_shares = |n: u32| {
        let patch = format!(r#"{{"spec":{{"limited":{{"nominalConcurrencyShares":{n}}}}}}}"#);
        let args = [
            "patch",
            "prioritylevelconfiguration",
            "workload-low",
            "--type=merge",
            "-p",
        ];
        s.kubectl(&[&args[..], &[patch.as_str()]].concat());
    };
    let shares = || {
        json(
            &s,
            &[
                "get",
                "prioritylevelconfiguration",
                "workload-low",
                "-o",
                "json",
            ],
        )["spec"]["limited"]["nominalConcurrencyShares"]
            .clone()
    };
    s.kubectl(&["delete", "flowschema", "global-default"]);
    set_shares(5);
    eventually("the suggested objects restored", || {
        let (ok, _, _) = s.kubectl_result(&["get", "flowschema", "global-default"], None);
        ok && shares() == 100
    });
    s.kubectl(&[
        "annotate",
        "--overwrite",
        "prioritylevelconfiguration",
        "workload-low",
        "apf.kubernetes.io/autoupdate-spec=false",
    ]);
    set_shares(7);
    eventually("the seats follow the new shares", || {
        // 600 * 7 / 152 shares
        metric(
            &s,
            r#"apiserver_flowcontrol_nominal_limit_seats{priority_level="workload-low"}"#,
        ) == 28.0
    });
    // the upkeep runs right after the reconfiguration the seats show: it kept the spec
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(shares(), 7);
}

#[test]
fn without_priority_and_fairness_the_in_flight_limits_apply() {
    let s = TestServer::start_with(|c| {
        c.enable_priority_and_fairness = false;
        c.max_requests_inflight = 0;
        c.max_mutating_requests_inflight = 1;
    });
    s.kubectl(&[
        "create",
        "clusterrolebinding",
        "apf-slow",
        "--clusterrole=edit",
        "--user=apf-slow",
    ]);
    // (the binding in force first: a holder refused by RBAC gives its slot back at once)
    eventually("apf-slow allowed", || {
        get(&s, Some("apf-slow"), CONFIGMAPS).code == 200
    });
    let holder = Holder::start(&s, "apf-slow", "held");
    // the one mutating slot taken: another write is refused, reads are not limited
    eventually("the mutating slot taken", || {
        let url = format!("{}{CONFIGMAPS}", s.server().url());
        let out = curl_cmd(
            &s,
            Some("jane"),
            &[
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "-d",
                "{}",
                &url,
            ],
        )
        .output()
        .expect("curl");
        Reply::parse(&out.stdout).code == 429
    });
    let read = get(&s, Some("apf-slow"), CONFIGMAPS);
    assert_eq!(read.code, 200, "{}", read.body);
    assert_eq!(read.schema_uid(), None, "no APF headers without APF");
    // system:masters is not limited
    s.kubectl(&["create", "configmap", "by-admin"]);
    assert_eq!(holder.release().code, 201);
    s.kubectl(&["--as=apf-slow", "create", "configmap", "after"]);
}

#[test]
fn a_list_of_many_objects_takes_several_seats() {
    // three seats in all; the `wide` level's share of them is all three
    let s = TestServer::start_with(|c| {
        c.max_requests_inflight = 2;
        c.max_mutating_requests_inflight = 1;
    });
    user_level(&s, "apf-lister", ("wide", 10000, reject()), ("lister", 40));
    // 250 ConfigMaps: a list of them is estimated at 3 seats (100 objects a seat)
    let many: Vec<String> = (0..250)
        .map(|i| {
            format!(r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"cm-{i}"}}}}"#)
        })
        .collect();
    s.kubectl_stdin(
        &["create", "-f", "-"],
        Some(&format!(
            r#"{{"apiVersion":"v1","kind":"List","items":[{}]}}"#,
            many.join(",")
        )),
    );
    assert_eq!(
        metric(
            &s,
            r#"apiserver_flowcontrol_nominal_limit_seats{priority_level="wide"}"#
        ),
        3.0
    );
    let lister = uid(&s, "flowschema", "lister");
    eventually("the lister schema in force", || {
        get(&s, Some("apf-lister"), "/api/v1/configmaps").schema_uid() == Some(lister.as_str())
    });
    assert_eq!(get(&s, Some("apf-lister"), "/api/v1/configmaps").code, 200);

    // one seat held: the big list (3 seats) no longer fits, one-seat requests still do
    let holder = Holder::start(&s, "apf-lister", "held");
    let seats = r#"apiserver_flowcontrol_current_executing_seats{flow_schema="lister",priority_level="wide"}"#;
    eventually("the holder executing", || metric(&s, seats) == 1.0);
    let big = get(&s, Some("apf-lister"), "/api/v1/configmaps");
    assert_eq!(big.code, 429, "{}", big.body);
    let small = get(
        &s,
        Some("apf-lister"),
        "/api/v1/namespaces/default/configmaps/cm-7",
    );
    assert_eq!(small.code, 200, "{}", small.body);
    let empty_list = get(&s, Some("apf-lister"), "/api/v1/namespaces/default/pods");
    assert_eq!(empty_list.code, 200, "a list of few objects takes one seat");
    assert_eq!(holder.release().code, 201);
    assert_eq!(metric(&s, seats), 0.0);
    assert_eq!(get(&s, Some("apf-lister"), "/api/v1/configmaps").code, 200);
}

/// A dump's rows, each split into its cells (upstream's `,`-joined, tab-aligned columns).
fn dump(s: &TestServer, path: &str) -> Vec<Vec<String>> {
    let text = s.kubectl(&["get", "--raw", path]);
    text.lines()
        .map(|l| l.split(',').map(|c| c.trim().to_string()).collect())
        .collect()
}

/// The rows of a dump whose first cell is `level`.
fn rows_of<'a>(rows: &'a [Vec<String>], level: &str) -> Vec<&'a Vec<String>> {
    rows.iter().filter(|r| r[0] == level).collect()
}

#[test]
fn the_debug_dumps_show_levels_queues_and_requests() {
    let s = server();
    let executing = r#"apiserver_flowcontrol_current_executing_requests{flow_schema="waits",priority_level="queued"}"#;
    let in_queue = r#"apiserver_flowcontrol_current_inqueue_requests{flow_schema="waits",priority_level="queued"}"#;
    let holder = Holder::start(&s, "apf-queued", "first");
    eventually("the holder executing", || metric(&s, executing) == 1.0);
    let waiting = get_later(&s, "apf-queued", CONFIGMAPS);
    eventually("a request queued", || metric(&s, in_queue) == 1.0);

    let levels = dump(&s, "/debug/api_priority_and_fairness/dump_priority_levels");
    assert_eq!(
        levels[0],
        [
            "PriorityLevelName",
            "ActiveQueues",
            "IsIdle",
            "IsQuiescing",
            "WaitingRequests",
            "ExecutingRequests",
            "DispatchedRequests",
            "RejectedRequests",
            "TimedoutRequests",
            "CancelledRequests"
        ]
    );
    let names: Vec<&str> = levels[1..].iter().map(|r| r[0].as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted, "levels by name");
    assert!(names.contains(&"exempt") && names.contains(&"workload-low"));
    let queued = rows_of(&levels, "queued")[0];
    assert_eq!(
        queued[1..6],
        ["1", "false", "false", "1", "1"],
        "{queued:?}"
    );
    let dispatched: u64 = queued[6].parse().expect("a count");
    assert!(
        dispatched >= 2,
        "the setup's request and the holder: {queued:?}"
    );

    let queues = dump(&s, "/debug/api_priority_and_fairness/dump_queues");
    assert_eq!(
        queues[0],
        [
            "PriorityLevelName",
            "Index",
            "PendingRequests",
            "ExecutingRequests",
            "SeatsInUse",
            "NextDispatchR",
            "InitialSeatsSum",
            "MaxSeatsSum",
            "TotalWorkSum"
        ]
    );
    let queue = rows_of(&queues, "queued");
    assert_eq!(queue.len(), 1, "one queue: {queue:?}");
    assert_eq!(queue[0][1..5], ["0", "1", "1", "1"], "{queue:?}");
    assert!(queue[0][5].ends_with("ss"), "virtual time: {queue:?}");
    // the waiting list: one seat, upstream's 3 ms estimate of its work
    assert_eq!(queue[0][6..], ["1", "1", "0.00300000ss"], "{queue:?}");

    let requests = dump(
        &s,
        "/debug/api_priority_and_fairness/dump_requests?includeRequestDetails=1",
    );
    assert_eq!(requests[0].len(), 18, "{:?}", requests[0]);
    assert_eq!(requests[0][9..11], ["StartTime", "UserName"]);
    let mine = rows_of(&requests, "queued");
    assert_eq!(mine.len(), 2, "{mine:?}");
    let waiter = mine
        .iter()
        .find(|r| r[3] == "0")
        .expect("the waiting request");
    assert_eq!(waiter[1..3], ["waits", "0"]);
    assert_eq!(waiter[9], "0001-01-01T00:00:00Z", "not started: {waiter:?}");
    assert_eq!(
        waiter[10..],
        [
            "apf-queued",
            "list",
            CONFIGMAPS,
            "default",
            "",
            "v1",
            "configmaps",
            ""
        ]
    );
    let running = mine
        .iter()
        .find(|r| r[3] == "-1")
        .expect("the executing request");
    assert_eq!(running[10..12], ["apf-queued", "create"]);
    assert_ne!(running[9], "0001-01-01T00:00:00Z", "started: {running:?}");
    let time = |t: &str| t.parse::<jiff::Timestamp>().expect("an RFC 3339 time");
    assert!(
        time(&running[5]) <= time(&running[9]),
        "arrived before it started: {running:?}"
    );
    // the dump's own request: exempt, run without a queue
    let own = rows_of(&requests, "exempt");
    assert!(
        own.iter().any(|r| r[2..4] == ["-1", "-1"]
            && r[12] == "/debug/api_priority_and_fairness/dump_requests"),
        "{own:?}"
    );
    // without details: the first ten columns only
    let plain = dump(&s, "/debug/api_priority_and_fairness/dump_requests");
    assert!(plain.iter().all(|r| r.len() == 10), "{plain:?}");

    assert_eq!(holder.release().code, 201);
    assert_eq!(finish(waiting).code, 200);
    let levels = dump(&s, "/debug/api_priority_and_fairness/dump_priority_levels");
    let queued = rows_of(&levels, "queued")[0];
    assert_eq!(queued[1..6], ["0", "true", "false", "0", "0"], "{queued:?}");
    assert_eq!(queued[6], (dispatched + 1).to_string(), "{queued:?}");

    // the dumps are `get` on their non-resource URLs
    let denied = get(
        &s,
        Some("jane"),
        "/debug/api_priority_and_fairness/dump_queues",
    );
    assert_eq!(denied.code, 403, "{}", denied.body);
    assert_eq!(
        get(&s, None, "/debug/api_priority_and_fairness/dump_other").code,
        404
    );
}

/// Watching curls, ended when dropped.
struct Watches(Vec<std::process::Child>);

impl Drop for Watches {
    fn drop(&mut self) {
        for w in &mut self.0 {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

/// The open configmap watches the request metrics count.
fn configmap_watches(s: &TestServer) -> f64 {
    get(s, None, "/metrics")
        .body
        .lines()
        .filter(|l| {
            l.starts_with("apiserver_longrunning_requests{")
                && l.contains(r#"verb="WATCH""#)
                && l.contains(r#"resource="configmaps""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn a_write_takes_a_seat_per_ten_watches_of_its_resource() {
    let s = TestServer::start();
    user_level(&s, "apf-writer", ("writes", 1000, reject()), ("writer", 40));
    let writer = uid(&s, "flowschema", "writer");
    eventually("the writer schema in force", || {
        get(&s, Some("apf-writer"), CONFIGMAPS).schema_uid() == Some(writer.as_str())
    });
    s.kubectl(&["create", "namespace", "elsewhere"]);
    // 12 watches of default's ConfigMaps and 9 of all namespaces' count for a write in
    // default; 5 in another namespace do not: 21 watches, 3 seats after the write
    let url = |path: &str| format!("{}{path}?watch=1", s.server().url());
    let mut watches = Watches(Vec::new());
    for (path, n) in [
        (CONFIGMAPS.to_string(), 12),
        ("/api/v1/configmaps".to_string(), 9),
        ("/api/v1/namespaces/elsewhere/configmaps".to_string(), 5),
    ] {
        for _ in 0..n {
            let child = curl_cmd(&s, None, &[&url(&path)])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("curl");
            watches.0.push(child);
        }
    }
    eventually("the watches open", || configmap_watches(&s) == 26.0);
    let seats = r#"apiserver_flowcontrol_current_executing_seats{flow_schema="writer",priority_level="writes"}"#;
    let holder = Holder::start(&s, "apf-writer", "watched");
    eventually("the write executing", || metric(&s, seats) == 3.0);
    let requests = dump(
        &s,
        "/debug/api_priority_and_fairness/dump_requests?includeRequestDetails=1",
    );
    let write = rows_of(&requests, "writes");
    assert_eq!(write.len(), 1, "{write:?}");
    assert_eq!(write[0][6..9], ["1", "3", "5ms"], "{write:?}");
    assert_eq!(write[0][11], "create");
    assert_eq!(holder.release().code, 201);
    // the final seats are given back 5 ms after the answer
    eventually("the seats given back", || metric(&s, seats) == 0.0);

    // the watches gone, a write takes one seat
    drop(watches);
    eventually("the watches closed", || configmap_watches(&s) == 0.0);
    let holder = Holder::start(&s, "apf-writer", "unwatched");
    eventually("the write executing", || metric(&s, seats) == 1.0);
    let requests = dump(&s, "/debug/api_priority_and_fairness/dump_requests");
    assert_eq!(rows_of(&requests, "writes")[0][6..9], ["1", "0", "0s"]);
    assert_eq!(holder.release().code, 201);
}

/// The value of the line of `body` (a `/metrics` scrape) starting with `series`, 0 if none.
fn value(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn work_estimates_watch_counts_and_execution_times_are_exported() {
    let s = TestServer::start();
    let user = "apf-measured";
    user_level(&s, user, ("measured", 1000, reject()), ("measures", 40));
    let measures = uid(&s, "flowschema", "measures");
    eventually("the measures schema in force", || {
        get(&s, Some(user), CONFIGMAPS).schema_uid() == Some(measures.as_str())
    });
    let scrape = || get(&s, None, "/metrics").body;
    let series = |name: &str, more: &str| {
        format!(
            r#"apiserver_flowcontrol_{name}{{flow_schema="measures",priority_level="measured"{more}}}"#
        )
    };
    let grew = |before: &str, after: &str, name: &str, more: &str| {
        value(after, &series(name, more)) - value(before, &series(name, more))
    };

    // three lists and two creates with no watch open: one seat each, no watches sampled
    let before = scrape();
    for _ in 0..3 {
        assert_eq!(get(&s, Some(user), CONFIGMAPS).code, 200);
    }
    for name in ["measured-1", "measured-2"] {
        assert_eq!(Holder::start(&s, user, name).release().code, 201);
    }
    let after = scrape();
    for (name, more, want) in [
        ("work_estimated_seats_count", "", 5.0),
        ("work_estimated_seats_bucket", r#",le="1""#, 5.0),
        ("watch_count_samples_count", "", 2.0),
        ("watch_count_samples_bucket", r#",le="0""#, 2.0),
        ("watch_count_samples_sum", "", 0.0),
        ("request_execution_seconds_count", r#",type="regular""#, 5.0),
        (
            "request_execution_seconds_bucket",
            r#",type="regular",le="+Inf""#,
            5.0,
        ),
    ] {
        assert_eq!(grew(&before, &after, name, more), want, "{name}{more}");
    }
    assert!(
        value(
            &after,
            &series("request_execution_seconds_sum", r#",type="regular""#)
        ) > 0.0
    );
    // the admin is exempt: its requests' execution is observed, no work estimate
    assert!(
        value(
            &after,
            r#"apiserver_flowcontrol_request_execution_seconds_count{flow_schema="exempt",priority_level="exempt",type="regular"}"#
        ) > 0.0
    );
    assert!(
        !after.contains(r#"apiserver_flowcontrol_work_estimated_seats_count{flow_schema="exempt""#)
    );
    for name in [
        "work_estimated_seats",
        "watch_count_samples",
        "request_execution_seconds",
    ] {
        let kind = format!("# TYPE apiserver_flowcontrol_{name} histogram\n");
        assert!(after.contains(&kind), "{kind}");
    }

    // 11 watches of default's ConfigMaps, the last the user's own: its execution (until
    // its response starts) is a `watch`'s
    let url = format!("{}{CONFIGMAPS}?watch=1", s.server().url());
    let mut watches = Watches(Vec::new());
    for as_user in std::iter::repeat_n(None, 10).chain([Some(user)]) {
        let child = curl_cmd(&s, as_user, &[&url])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("curl");
        watches.0.push(child);
    }
    eventually("the watches open", || configmap_watches(&s) == 11.0);
    let watch_ran = series("request_execution_seconds_count", r#",type="watch""#);
    eventually("the user's watch executed", || {
        value(&scrape(), &watch_ran) == 1.0
    });
    // a create the 11 watches see: 11 watches sampled, two seats (one per ten watches)
    let before = scrape();
    assert_eq!(Holder::start(&s, user, "measured-3").release().code, 201);
    let after = scrape();
    for (name, more, want) in [
        ("watch_count_samples_count", "", 1.0),
        ("watch_count_samples_sum", "", 11.0),
        ("watch_count_samples_bucket", r#",le="10""#, 0.0),
        ("watch_count_samples_bucket", r#",le="100""#, 1.0),
        ("work_estimated_seats_bucket", r#",le="1""#, 0.0),
        ("work_estimated_seats_bucket", r#",le="2""#, 1.0),
        ("work_estimated_seats_sum", "", 2.0),
        ("request_execution_seconds_count", r#",type="regular""#, 1.0),
    ] {
        assert_eq!(grew(&before, &after, name, more), want, "{name}{more}");
    }
    drop(watches);
}

#[test]
fn a_busy_level_borrows_the_seats_idle_levels_lend() {
    let s = server();
    // a queuing level that lends none of its one seat and may borrow without limit (no
    // borrowingLimitPercent); `tight` (server()) may borrow none
    let limited = serde_json::json!({"nominalConcurrencyShares": 1, "lendablePercent": 0,
        "limitResponse": {"type": "Queue",
            "queuing": {"queues": 1, "handSize": 1, "queueLengthLimit": 10}}});
    user_level_with(&s, "apf-borrower", ("borrower", limited), ("borrows", 45));
    let borrows = uid(&s, "flowschema", "borrows");
    eventually("the borrower schema in force", || {
        get(&s, Some("apf-borrower"), CONFIGMAPS).schema_uid() == Some(borrows.as_str())
    });
    let limit = |kind: &str, level: &str| {
        metric(
            &s,
            &format!(r#"apiserver_flowcontrol_{kind}_limit_seats{{priority_level="{level}"}}"#),
        )
    };
    assert_eq!(limit("nominal", "borrower"), 1.0);

    // its one seat held, three more requests wait: a demand of four seats
    let executing = r#"apiserver_flowcontrol_current_executing_requests{flow_schema="borrows",priority_level="borrower"}"#;
    let in_queue = r#"apiserver_flowcontrol_current_inqueue_requests{flow_schema="borrows",priority_level="borrower"}"#;
    let holder = Holder::start(&s, "apf-borrower", "held");
    eventually("the holder executing", || metric(&s, executing) == 1.0);
    let waiting: Vec<_> = (0..3)
        .map(|_| get_later(&s, "apf-borrower", CONFIGMAPS))
        .collect();
    eventually("three requests queued", || metric(&s, in_queue) == 3.0);
    let queued = Instant::now();
    // the next adjustment (every 10 s) lends it the idle levels' seats: the waiting requests
    // run while the holder keeps the nominal seat (else they would time out, 429, at 15 s)
    for w in waiting {
        let served = finish(w);
        assert_eq!(served.code, 200, "{}", served.body);
    }
    assert!(
        queued.elapsed() < Duration::from_secs(15),
        "{:?}",
        queued.elapsed()
    );
    assert_eq!(metric(&s, executing), 1.0, "the holder still executing");
    assert!(
        limit("current", "borrower") >= 2.0,
        "{}",
        limit("current", "borrower")
    );
    assert_eq!(limit("nominal", "borrower"), 1.0);
    // upstream's borrowing metrics: the configured bounds, the demand that drove it
    assert_eq!(limit("lower", "borrower"), 1.0, "it lends nothing");
    assert_eq!(
        limit("upper", "borrower"),
        1.0 + f64::from(i32::MAX),
        "no borrowing limit (upstream's MaxInt32 more seats)"
    );
    assert_eq!(limit("upper", "tight"), 1.0);
    let smoothed = metric(
        &s,
        r#"apiserver_flowcontrol_demand_seats_smoothed{priority_level="borrower"}"#,
    );
    assert!(
        smoothed > 1.0,
        "more than its one seat asked for: {smoothed}"
    );
    assert!(metric(&s, "apiserver_flowcontrol_seat_fair_frac") > 0.0);
    assert_eq!(holder.release().code, 201);

    // tight, with the same nominal seat but no borrowing, still runs one request at a time
    assert_eq!(limit("current", "tight"), 1.0);
    let holder = Holder::start(&s, "apf-slow", "one");
    eventually("tight's holder executing", || {
        metric(
            &s,
            r#"apiserver_flowcontrol_current_executing_requests{flow_schema="slow",priority_level="tight"}"#,
        ) == 1.0
    });
    assert_eq!(get(&s, Some("apf-slow"), CONFIGMAPS).code, 429);
    assert_eq!(holder.release().code, 201);
}
