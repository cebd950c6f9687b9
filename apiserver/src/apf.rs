//! API Priority and Fairness applied to requests, as upstream's `WithPriorityAndFairness`
//! filter does it: every request (but the long-running ones other than watches) is
//! classified by the first FlowSchema that matches it (by `matchingPrecedence`, then name)
//! into that schema's priority level and a flow (the schema plus the user or namespace its
//! distinguisher names); the response says where it went in
//! `X-Kubernetes-PF-FlowSchema-UID` and `X-Kubernetes-PF-PriorityLevel-UID`.
//!
//! An `Exempt` level runs its requests at once. A `Limited` level runs at most its nominal
//! concurrency limit at a time: `ceil(server limit * its shares / all levels' shares)`, the
//! server limit being `--max-requests-inflight` plus `--max-mutating-requests-inflight`.
//! Past that, a `Reject` level answers 429 at once; a `Queue` level shuffle-shards the flow
//! onto `handSize` of its `queues`, waits in the shortest of them (429 when it already holds
//! `queueLengthLimit`, or after 15 s, upstream's quarter of the request timeout) and is
//! dispatched round-robin across the queues as seats free.
//!
//! A LIST (and a watch, for its initial list) takes upstream's estimate of seats: one per
//! 100 objects of its resource, 1 to 10 (and never more than its level has); anything else
//! one. What kaze leaves out of upstream's design: a write's extra seats for the watchers it
//! notifies, levels lending and borrowing seats
//! (`lendablePercent` and `borrowingLimitPercent` are stored, not applied), and a queue is
//! served round-robin rather than by virtual finish time (the same order for requests of
//! equal cost).
//!
//! With `--enable-priority-and-fairness=false` the older max-in-flight filter applies
//! instead: at most `--max-requests-inflight` read-only and
//! `--max-mutating-requests-inflight` mutating requests at once (0: no limit), `system:masters`
//! and long-running requests not counted, the rest answered 429.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::sync::oneshot;

use crate::auth::UserInfo;
use crate::state::AppState;
use crate::status::ApiError;

const FLOW_SCHEMA_UID: &str = "x-kubernetes-pf-flowschema-uid";
const PRIORITY_LEVEL_UID: &str = "x-kubernetes-pf-prioritylevel-uid";
/// How long a request may wait in a queue: upstream's quarter of the 60 s request timeout.
const QUEUE_WAIT: Duration = Duration::from_secs(15);
/// Upstream's work estimator: a LIST (or a watch's initial list) takes a seat per this many
/// objects of its resource, ...
const OBJECTS_PER_SEAT: u64 = 100;
/// ... and at most this many seats.
const MAX_SEATS: u64 = 10;
/// `apiserver_flowcontrol_request_wait_duration_seconds`' buckets (upstream's).
const WAIT_BUCKETS: [f64; 12] = [
    0.0, 0.005, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
];

/// The limits the apiserver's flags set.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub priority_and_fairness: bool,
    pub max_requests_inflight: u32,
    pub max_mutating_requests_inflight: u32,
}

/// What the filter needs of a request: upstream's `RequestInfo`, parsed from the URL alone.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestInfo {
    pub resource_request: bool,
    pub version: String,
    /// `get`, `list`, `watch`, `create`, ...; for a non-resource request the lower-case method.
    pub verb: String,
    pub group: String,
    pub namespace: String,
    pub resource: String,
    pub subresource: String,
    pub path: String,
}

impl RequestInfo {
    pub fn parse(method: &Method, path: &str, query: Option<&str>) -> RequestInfo {
        let mut info = RequestInfo {
            resource_request: false,
            version: String::new(),
            verb: method.as_str().to_ascii_lowercase(),
            group: String::new(),
            namespace: String::new(),
            resource: String::new(),
            subresource: String::new(),
            path: path.to_string(),
        };
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let (group, version, mut rest): (&str, &str, &[&str]) = match segs.as_slice() {
            ["api", v, rest @ ..] if !rest.is_empty() => ("", v, rest),
            ["apis", g, v, rest @ ..] if !rest.is_empty() => (g, v, rest),
            _ => return info,
        };
        info.resource_request = true;
        info.group = group.to_string();
        info.version = version.to_string();
        let mut verb = None;
        if let Some(v @ ("watch" | "proxy")) = rest.first().copied() {
            verb = Some(v);
            rest = &rest[1..];
        }
        if rest.first() == Some(&"namespaces") && rest.len() > 1 {
            info.namespace = rest[1].to_string();
            if rest.len() > 2 && !matches!(rest[2], "status" | "finalize") {
                rest = &rest[2..];
            }
        }
        info.resource = rest.first().map(|s| s.to_string()).unwrap_or_default();
        let named = rest.len() > 1;
        info.subresource = rest.get(2).map(|s| s.to_string()).unwrap_or_default();
        let watch = query.is_some_and(|q| {
            form_urlencoded::parse(q.as_bytes())
                .any(|(k, v)| k == "watch" && (v == "true" || v == "1"))
        });
        info.verb = match (verb, method.as_str()) {
            (Some(v), _) => v,
            (None, "GET" | "HEAD") if watch => "watch",
            (None, "GET" | "HEAD") if named => "get",
            (None, "GET" | "HEAD") => "list",
            (None, "POST") => "create",
            (None, "PUT") => "update",
            (None, "PATCH") => "patch",
            (None, "DELETE") if named => "delete",
            (None, "DELETE") => "deletecollection",
            (None, m) => {
                return RequestInfo {
                    verb: m.to_ascii_lowercase(),
                    ..info
                }
            }
        }
        .to_string();
        info
    }

    /// Upstream's long-running check: watches, proxies, logs, exec, attach, port-forward.
    pub fn long_running(&self) -> bool {
        self.resource_request
            && (matches!(self.verb.as_str(), "watch" | "proxy")
                || matches!(
                    self.subresource.as_str(),
                    "attach" | "exec" | "proxy" | "log" | "portforward"
                ))
    }

    fn read_only(&self) -> bool {
        matches!(self.verb.as_str(), "get" | "list" | "watch")
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Subject {
    User(String),
    Group(String),
    ServiceAccount { namespace: String, name: String },
}

#[derive(Debug, Clone, Default)]
struct ResourceRule {
    verbs: Vec<String>,
    groups: Vec<String>,
    resources: Vec<String>,
    cluster_scope: bool,
    namespaces: Vec<String>,
}

#[derive(Debug, Clone, Default)]
struct NonResourceRule {
    verbs: Vec<String>,
    urls: Vec<String>,
}

#[derive(Debug, Clone, Default)]
struct Rule {
    subjects: Vec<Subject>,
    resources: Vec<ResourceRule>,
    non_resources: Vec<NonResourceRule>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Distinguisher {
    None,
    ByUser,
    ByNamespace,
}

#[derive(Debug, Clone)]
struct Schema {
    name: String,
    uid: String,
    level: String,
    precedence: i64,
    distinguisher: Distinguisher,
    rules: Vec<Rule>,
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn has(list: &[String], want: &str) -> bool {
    list.iter().any(|s| s == "*" || s == want)
}

impl Schema {
    fn from_object(fs: &Value) -> Schema {
        let spec = &fs["spec"];
        let rules = spec["rules"].as_array().cloned().unwrap_or_default();
        Schema {
            name: crate::meta::meta_str(fs, "name").unwrap_or("").to_string(),
            uid: crate::meta::meta_str(fs, "uid").unwrap_or("").to_string(),
            level: spec
                .pointer("/priorityLevelConfiguration/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            precedence: spec["matchingPrecedence"].as_i64().unwrap_or(1000),
            distinguisher: match spec
                .pointer("/distinguisherMethod/type")
                .and_then(Value::as_str)
            {
                Some("ByUser") => Distinguisher::ByUser,
                Some("ByNamespace") => Distinguisher::ByNamespace,
                _ => Distinguisher::None,
            },
            rules: rules
                .iter()
                .map(|r| Rule {
                    subjects: r["subjects"]
                        .as_array()
                        .map(|a| a.iter().filter_map(subject).collect())
                        .unwrap_or_default(),
                    resources: r["resourceRules"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .map(|rr| ResourceRule {
                                    verbs: strings(rr, "verbs"),
                                    groups: strings(rr, "apiGroups"),
                                    resources: strings(rr, "resources"),
                                    cluster_scope: rr["clusterScope"].as_bool().unwrap_or(false),
                                    namespaces: strings(rr, "namespaces"),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    non_resources: r["nonResourceRules"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .map(|nr| NonResourceRule {
                                    verbs: strings(nr, "verbs"),
                                    urls: strings(nr, "nonResourceURLs"),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                })
                .collect(),
        }
    }

    /// Upstream's `matchesFlowSchema`: some rule matches both the user and the request.
    fn matches(&self, info: &RequestInfo, user: &UserInfo) -> bool {
        self.rules.iter().any(|r| {
            r.subjects.iter().any(|s| subject_matches(s, user))
                && if info.resource_request {
                    r.resources.iter().any(|rr| resource_matches(rr, info))
                } else {
                    r.non_resources.iter().any(|nr| {
                        has(&nr.verbs, &info.verb)
                            && nr.urls.iter().any(|u| url_matches(u, &info.path))
                    })
                }
        })
    }

    fn flow(&self, info: &RequestInfo, user: &UserInfo) -> String {
        match self.distinguisher {
            Distinguisher::None => String::new(),
            Distinguisher::ByUser => user.name.clone(),
            Distinguisher::ByNamespace => info.namespace.clone(),
        }
    }
}

fn subject(s: &Value) -> Option<Subject> {
    let name = |p: &str| s.pointer(p).and_then(Value::as_str).map(str::to_string);
    match s["kind"].as_str()? {
        "User" => Some(Subject::User(name("/user/name")?)),
        "Group" => Some(Subject::Group(name("/group/name")?)),
        "ServiceAccount" => Some(Subject::ServiceAccount {
            namespace: name("/serviceAccount/namespace")?,
            name: name("/serviceAccount/name")?,
        }),
        _ => None,
    }
}

fn subject_matches(s: &Subject, user: &UserInfo) -> bool {
    match s {
        Subject::User(n) => n == "*" || *n == user.name,
        Subject::Group(g) => g == "*" || user.groups.iter().any(|ug| ug == g),
        Subject::ServiceAccount { namespace, name } => user
            .name
            .strip_prefix("system:serviceaccount:")
            .and_then(|rest| rest.split_once(':'))
            .is_some_and(|(ns, n)| ns == namespace && (name == "*" || name == n)),
    }
}

fn resource_matches(rr: &ResourceRule, info: &RequestInfo) -> bool {
    let resource_ok = rr.resources.iter().any(|r| {
        r == "*"
            || if info.subresource.is_empty() {
                *r == info.resource
            } else {
                *r == format!("{}/{}", info.resource, info.subresource)
            }
    });
    let where_ok = if info.namespace.is_empty() {
        rr.cluster_scope
    } else {
        has(&rr.namespaces, &info.namespace)
    };
    has(&rr.verbs, &info.verb) && has(&rr.groups, &info.group) && resource_ok && where_ok
}

/// `*` matches every path, `/prefix/*` every path under the prefix, anything else itself.
fn url_matches(pattern: &str, path: &str) -> bool {
    pattern == "*"
        || pattern == path
        || pattern
            .strip_suffix('*')
            .is_some_and(|prefix| prefix.ends_with('/') && path.starts_with(prefix))
}

/// Upstream's shuffle-sharding dealer: `hand` distinct queues out of `deck`, from `hash`.
fn deal(mut hash: u64, deck: usize, hand: usize) -> Vec<usize> {
    let hand = hand.min(deck);
    let mut picks: Vec<usize> = Vec::with_capacity(hand);
    for i in 0..hand {
        let left = (deck - i) as u64;
        picks.push((hash % left) as usize);
        hash /= left;
    }
    // the i-th pick indexes the cards not dealt yet: shift it past each smaller card dealt
    let mut hand_out: Vec<usize> = Vec::with_capacity(hand);
    for i in 0..hand {
        let mut card = picks[i];
        for j in (0..i).rev() {
            if card >= picks[j] {
                card += 1;
            }
        }
        hand_out.push(card);
    }
    hand_out
}

fn flow_hash(schema: &str, flow: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (schema, flow).hash(&mut h);
    h.finish()
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Queuing {
    queues: usize,
    hand: usize,
    max_len: usize,
}

struct Waiter {
    id: u64,
    seats: u64,
    schema: String,
    since: Instant,
    grant: oneshot::Sender<()>,
}

struct Level {
    uid: String,
    exempt: bool,
    shares: u64,
    limit: u64,
    /// None: `Reject`.
    queuing: Option<Queuing>,
    /// Seats in use.
    executing: u64,
    queues: Vec<VecDeque<Waiter>>,
    /// Where round-robin dispatch looks next.
    robin: usize,
    enqueues: usize,
    /// No longer configured: removed once idle.
    removed: bool,
}

impl Level {
    fn from_object(pl: &Value) -> Level {
        let spec = &pl["spec"];
        let exempt = spec["type"] == "Exempt";
        let part = if exempt {
            &spec["exempt"]
        } else {
            &spec["limited"]
        };
        let queuing = (!exempt
            && part.pointer("/limitResponse/type") == Some(&Value::from("Queue")))
        .then(|| {
            let q = &part["limitResponse"]["queuing"];
            let n = |k: &str, d: u64| q[k].as_u64().filter(|v| *v > 0).unwrap_or(d) as usize;
            Queuing {
                queues: n("queues", 64),
                hand: n("handSize", 8),
                max_len: n("queueLengthLimit", 50),
            }
        });
        Level {
            uid: crate::meta::meta_str(pl, "uid").unwrap_or("").to_string(),
            exempt,
            shares: part["nominalConcurrencyShares"]
                .as_u64()
                .unwrap_or(if exempt { 0 } else { 30 }),
            limit: 0,
            queuing,
            executing: 0,
            queues: Vec::new(),
            robin: 0,
            enqueues: 0,
            removed: false,
        }
    }

    fn waiting(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }
}

type Key = (String, String);
/// Bucket counts, sum, count.
type Histogram = ([u64; WAIT_BUCKETS.len()], f64, u64);

#[derive(Default)]
struct Inner {
    /// In matching order; schemas whose level does not exist are left out.
    schemas: Vec<Schema>,
    levels: HashMap<String, Level>,
    next_id: u64,
    dispatched: BTreeMap<Key, u64>,
    rejected: BTreeMap<(String, String, &'static str), u64>,
    in_queue: BTreeMap<Key, i64>,
    executing: BTreeMap<Key, i64>,
    executing_seats: BTreeMap<Key, i64>,
    /// (schema, level, executed) -> the wait's histogram.
    waits: BTreeMap<(String, String, bool), Histogram>,
    /// The max-in-flight filter's counts: read-only, mutating.
    inflight: [u32; 2],
}

impl Inner {
    fn reject(&mut self, schema: &str, level: &str, reason: &'static str) {
        *self
            .rejected
            .entry((schema.to_string(), level.to_string(), reason))
            .or_default() += 1;
    }

    fn observe_wait(&mut self, schema: &str, level: &str, executed: bool, secs: f64) {
        let e = self
            .waits
            .entry((schema.to_string(), level.to_string(), executed))
            .or_insert(([0; WAIT_BUCKETS.len()], 0.0, 0));
        for (i, b) in WAIT_BUCKETS.iter().enumerate() {
            if secs <= *b {
                e.0[i] += 1;
            }
        }
        e.1 += secs;
        e.2 += 1;
    }

    fn start_executing(&mut self, schema: &str, level: &str, seats: u64) {
        let key = (schema.to_string(), level.to_string());
        *self.dispatched.entry(key.clone()).or_default() += 1;
        *self.executing.entry(key.clone()).or_default() += 1;
        *self.executing_seats.entry(key).or_default() += seats as i64;
        if let Some(l) = self.levels.get_mut(level) {
            l.executing += seats;
        }
    }

    /// Hand freed seats of `level` to its queued requests, round-robin over the queues.
    fn dispatch(&mut self, level: &str) {
        loop {
            let Some(l) = self.levels.get_mut(level) else {
                return;
            };
            if l.executing >= l.limit || l.waiting() == 0 {
                if l.removed && l.executing == 0 && l.waiting() == 0 {
                    self.levels.remove(level);
                }
                return;
            }
            let n = l.queues.len();
            let Some(i) = (1..=n)
                .map(|k| (l.robin + k) % n)
                .find(|i| !l.queues[*i].is_empty())
            else {
                return;
            };
            // the oldest request of that queue waits until its seats are all free
            let seats = l.queues[i].front().map_or(1, |w| w.seats);
            if l.executing + seats > l.limit {
                return;
            }
            l.robin = i;
            let w = l.queues[i].pop_front().expect("a non-empty queue");
            *self
                .in_queue
                .entry((w.schema.clone(), level.to_string()))
                .or_default() -= 1;
            let waited = w.since.elapsed().as_secs_f64();
            // a waiter that went away withdrew itself; one that has not yet can still run
            if w.grant.send(()).is_ok() {
                self.observe_wait(&w.schema, level, true, waited);
                self.start_executing(&w.schema, level, w.seats);
            }
        }
    }
}

/// The apiserver's APF state: configuration, queues, seats and metrics.
pub struct Apf {
    limits: Limits,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Apf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Apf").field("limits", &self.limits).finish()
    }
}

/// What classification decided.
enum Admission {
    Run(Seat),
    Wait(Place),
    Reject,
}

/// A seat of a priority level, given back (and handed on) when dropped.
struct Seat {
    apf: Arc<Apf>,
    /// (schema, level, seats); None: an exempt request, which takes no seat.
    held: Option<(String, String, u64)>,
}

impl Drop for Seat {
    fn drop(&mut self) {
        let Some((schema, level, seats)) = self.held.take() else {
            return;
        };
        let mut inner = self.apf.lock();
        let key = (schema, level.clone());
        *inner.executing.entry(key.clone()).or_default() -= 1;
        *inner.executing_seats.entry(key).or_default() -= seats as i64;
        if let Some(l) = inner.levels.get_mut(&level) {
            l.executing = l.executing.saturating_sub(seats);
        }
        inner.dispatch(&level);
    }
}

/// A queued request's place. If the request goes away while waiting (the client hung up),
/// the place is given up, or the seat it was just given is handed on.
struct Place {
    apf: Arc<Apf>,
    level: String,
    schema: String,
    id: u64,
    seats: u64,
    grant: oneshot::Receiver<()>,
    /// The wait ended (with a seat or a refusal) and was acted on.
    settled: bool,
}

impl Place {
    /// Wait for a seat, up to [`QUEUE_WAIT`].
    async fn wait(mut self) -> Option<Seat> {
        let granted = tokio::select! {
            r = &mut self.grant => r.is_ok(),
            _ = tokio::time::sleep(QUEUE_WAIT) => {
                // still queued: timed out; else the seat came as the time ran out
                !self.apf.withdraw(&self.level, &self.schema, self.id, "time-out")
                    && self.grant.try_recv().is_ok()
            }
        };
        self.settled = true;
        granted.then(|| Seat {
            apf: self.apf.clone(),
            held: Some((self.schema.clone(), self.level.clone(), self.seats)),
        })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        if !self
            .apf
            .withdraw(&self.level, &self.schema, self.id, "cancelled")
            && self.grant.try_recv().is_ok()
        {
            drop(Seat {
                apf: self.apf.clone(),
                held: Some((self.schema.clone(), self.level.clone(), self.seats)),
            });
        }
    }
}

impl Apf {
    pub fn new(limits: Limits) -> Apf {
        let apf = Apf {
            limits,
            inner: Mutex::new(Inner::default()),
        };
        // until the stored objects are read, the bootstrap configuration (with no uids)
        let levels = [
            crate::flowcontrol::mandatory_levels(),
            crate::flowcontrol::suggested_levels(),
        ]
        .concat();
        let schemas = [
            crate::flowcontrol::mandatory_schemas(),
            crate::flowcontrol::suggested_schemas(),
        ]
        .concat();
        apf.configure(&schemas, &levels);
        apf
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Take the stored FlowSchemas and PriorityLevelConfigurations as the configuration.
    /// Missing mandatory objects are stood in for by upstream's (as upstream does); a level's
    /// executing and queued requests carry over; a removed level drains.
    pub fn configure(&self, schemas: &[Value], levels: &[Value]) {
        let mut levels: Vec<Value> = levels.to_vec();
        let mut schemas: Vec<Value> = schemas.to_vec();
        let named = |list: &[Value], name: &str| {
            list.iter()
                .any(|o| crate::meta::meta_str(o, "name") == Some(name))
        };
        for (mandatory, list) in [
            (crate::flowcontrol::mandatory_levels(), &mut levels),
            (crate::flowcontrol::mandatory_schemas(), &mut schemas),
        ] {
            for m in mandatory {
                let name = crate::meta::meta_str(&m, "name").unwrap_or("").to_string();
                if !named(list, &name) {
                    list.push(m);
                }
            }
        }
        let mut wanted: HashMap<String, Level> = levels
            .iter()
            .filter_map(|pl| {
                let name = crate::meta::meta_str(pl, "name")?.to_string();
                Some((name, Level::from_object(pl)))
            })
            .collect();
        let total: u64 = wanted.values().map(|l| l.shares).sum();
        let server = u64::from(self.limits.max_requests_inflight)
            + u64::from(self.limits.max_mutating_requests_inflight);
        for l in wanted.values_mut() {
            l.limit = match (l.exempt, total) {
                (true, _) => u64::MAX,
                (false, 0) => 0,
                (false, _) => (server * l.shares).div_ceil(total),
            };
        }
        let mut sorted: Vec<Schema> = schemas
            .iter()
            .map(Schema::from_object)
            .filter(|s| wanted.contains_key(&s.level))
            .collect();
        sorted.sort_by(|a, b| (a.precedence, &a.name).cmp(&(b.precedence, &b.name)));

        let mut inner = self.lock();
        inner.schemas = sorted;
        let names: Vec<String> = inner.levels.keys().cloned().collect();
        for name in names {
            let l = inner.levels.get_mut(&name).expect("listed");
            match wanted.remove(&name) {
                Some(new) => {
                    let queues = new.queuing.map_or(0, |q| q.queues);
                    if queues != l.queues.len() && queues > 0 {
                        // redistribute what waits over the new number of queues
                        let waiting: Vec<Waiter> = l.queues.drain(..).flatten().collect();
                        l.queues = (0..queues).map(|_| VecDeque::new()).collect();
                        for (i, w) in waiting.into_iter().enumerate() {
                            l.queues[i % queues].push_back(w);
                        }
                        l.robin = 0;
                    }
                    l.uid = new.uid;
                    l.exempt = new.exempt;
                    l.shares = new.shares;
                    l.limit = new.limit;
                    l.queuing = new.queuing;
                    l.removed = false;
                }
                None => l.removed = true,
            }
        }
        for (name, mut l) in wanted {
            l.queues = (0..l.queuing.map_or(0, |q| q.queues))
                .map(|_| VecDeque::new())
                .collect();
            inner.levels.insert(name, l);
        }
        // more seats may let waiting requests run
        let names: Vec<String> = inner.levels.keys().cloned().collect();
        for name in names {
            inner.dispatch(&name);
        }
    }

    /// Classify the request and take a seat, a place in a queue, or a refusal. Also the
    /// (schema, level) uids for the response headers.
    fn admit(
        self: &Arc<Self>,
        info: &RequestInfo,
        user: &UserInfo,
        seats: u64,
    ) -> (Admission, (String, String)) {
        let mut inner = self.lock();
        let seat = |held| Seat {
            apf: self.clone(),
            held,
        };
        // what the request needs of its schema (not the rules: no copy of them per request)
        let Some((fs, pl, fs_uid, flow)) = inner
            .schemas
            .iter()
            .find(|s| s.matches(info, user))
            .map(|s| {
                (
                    s.name.clone(),
                    s.level.clone(),
                    s.uid.clone(),
                    s.flow(info, user),
                )
            })
        else {
            // not even catch-all matched (a user in neither system:(un)authenticated)
            return (Admission::Run(seat(None)), Default::default());
        };
        let Some(level) = inner.levels.get_mut(&pl) else {
            // schemas naming no level are not kept
            return (Admission::Run(seat(None)), (fs_uid, String::new()));
        };
        let uids = (fs_uid, level.uid.clone());
        if level.exempt {
            *inner
                .dispatched
                .entry((fs.clone(), pl.clone()))
                .or_default() += 1;
            inner.observe_wait(&fs, &pl, true, 0.0);
            return (Admission::Run(seat(None)), uids);
        }
        // never more than the level has, or it would never run
        let seats = seats.clamp(1, level.limit.max(1));
        if level.executing + seats <= level.limit && level.waiting() == 0 {
            inner.observe_wait(&fs, &pl, true, 0.0);
            inner.start_executing(&fs, &pl, seats);
            return (Admission::Run(seat(Some((fs, pl, seats)))), uids);
        }
        let Some(q) = level.queuing else {
            inner.reject(&fs, &pl, "concurrency-limit");
            inner.observe_wait(&fs, &pl, false, 0.0);
            return (Admission::Reject, uids);
        };
        let hand = deal(flow_hash(&fs, &flow), level.queues.len(), q.hand);
        // the shortest queue of the hand, the scan starting at a rotating offset
        let offset = level.enqueues % hand.len().max(1);
        level.enqueues += 1;
        let best = (0..hand.len())
            .map(|i| hand[(offset + i) % hand.len()])
            .min_by_key(|i| level.queues[*i].len())
            .filter(|i| level.queues[*i].len() < q.max_len);
        let Some(best) = best else {
            inner.reject(&fs, &pl, "queue-full");
            inner.observe_wait(&fs, &pl, false, 0.0);
            return (Admission::Reject, uids);
        };
        let (grant, granted) = oneshot::channel();
        let id = inner.next_id + 1;
        inner.next_id = id;
        inner.levels.get_mut(&pl).expect("found above").queues[best].push_back(Waiter {
            id,
            seats,
            schema: fs.clone(),
            since: Instant::now(),
            grant,
        });
        *inner.in_queue.entry((fs.clone(), pl.clone())).or_default() += 1;
        // seats may be free while others wait (just released, or the limit just grew)
        inner.dispatch(&pl);
        let place = Place {
            apf: self.clone(),
            level: pl,
            schema: fs,
            id,
            seats,
            grant: granted,
            settled: false,
        };
        (Admission::Wait(place), uids)
    }

    /// Take request `id` out of `level`'s queues: true if it was still waiting (counted as
    /// rejected for `reason`), false if it was already given a seat.
    fn withdraw(&self, level: &str, schema: &str, id: u64, reason: &'static str) -> bool {
        let mut inner = self.lock();
        let Some(l) = inner.levels.get_mut(level) else {
            return false;
        };
        let mut found = None;
        for q in l.queues.iter_mut() {
            if let Some(i) = q.iter().position(|w| w.id == id) {
                found = q.remove(i);
                break;
            }
        }
        let Some(w) = found else {
            return false;
        };
        *inner
            .in_queue
            .entry((schema.to_string(), level.to_string()))
            .or_default() -= 1;
        inner.reject(schema, level, reason);
        inner.observe_wait(schema, level, false, w.since.elapsed().as_secs_f64());
        inner.dispatch(level);
        true
    }

    /// The max-in-flight filter's slot for a request of this kind, if one is free.
    fn take_inflight(self: &Arc<Self>, read_only: bool) -> Option<InflightSlot> {
        let (i, max) = if read_only {
            (0, self.limits.max_requests_inflight)
        } else {
            (1, self.limits.max_mutating_requests_inflight)
        };
        let mut inner = self.lock();
        if max > 0 && inner.inflight[i] >= max {
            return None;
        }
        inner.inflight[i] += 1;
        Some(InflightSlot {
            apf: self.clone(),
            index: i,
        })
    }

    /// The `apiserver_flowcontrol_*` series.
    pub fn render_metrics(&self) -> String {
        let mut out = String::new();
        if !self.limits.priority_and_fairness {
            return out;
        }
        let inner = self.lock();
        let head = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        let fs_pl = |fs: &str, pl: &str| format!("flow_schema=\"{fs}\",priority_level=\"{pl}\"");
        let name = "apiserver_flowcontrol_dispatched_requests_total";
        head(
            &mut out,
            name,
            "counter",
            "[BETA] Number of requests executed by API Priority and Fairness subsystem",
        );
        for ((fs, pl), v) in &inner.dispatched {
            let _ = writeln!(out, "{name}{{{}}} {v}", fs_pl(fs, pl));
        }
        let name = "apiserver_flowcontrol_rejected_requests_total";
        head(
            &mut out,
            name,
            "counter",
            "[BETA] Number of requests rejected by API Priority and Fairness subsystem",
        );
        for ((fs, pl, reason), v) in &inner.rejected {
            let _ = writeln!(out, "{name}{{{},reason=\"{reason}\"}} {v}", fs_pl(fs, pl));
        }
        for (name, help, map) in [
            (
                "apiserver_flowcontrol_current_inqueue_requests",
                "[BETA] Number of requests currently pending in queues of the API Priority and Fairness subsystem",
                &inner.in_queue,
            ),
            (
                "apiserver_flowcontrol_current_executing_requests",
                "[BETA] Number of requests in initial (for a WATCH) or any (for a non-WATCH) execution stage in the API Priority and Fairness subsystem",
                &inner.executing,
            ),
            (
                "apiserver_flowcontrol_current_executing_seats",
                "[BETA] Concurrency (number of seats) occupied by the currently executing (initial stage for a WATCH, any stage otherwise) requests in the API Priority and Fairness subsystem",
                &inner.executing_seats,
            ),
        ] {
            head(&mut out, name, "gauge", help);
            for ((fs, pl), v) in map {
                let _ = writeln!(out, "{name}{{{}}} {v}", fs_pl(fs, pl));
            }
        }
        let mut levels: Vec<(&String, &Level)> =
            inner.levels.iter().filter(|(_, l)| !l.exempt).collect();
        levels.sort_by_key(|(n, _)| *n);
        for (name, help) in [
            (
                "apiserver_flowcontrol_nominal_limit_seats",
                "[BETA] Nominal number of execution seats configured for each priority level",
            ),
            (
                "apiserver_flowcontrol_current_limit_seats",
                "[ALPHA] current derived number of execution seats available to each priority level",
            ),
        ] {
            head(&mut out, name, "gauge", help);
            for (pl, l) in &levels {
                let _ = writeln!(out, "{name}{{priority_level=\"{pl}\"}} {}", l.limit);
            }
        }
        let name = "apiserver_flowcontrol_request_wait_duration_seconds";
        head(
            &mut out,
            name,
            "histogram",
            "[BETA] Length of time a request spent waiting in its queue",
        );
        for ((fs, pl, executed), (buckets, sum, count)) in &inner.waits {
            let labels = format!("execute=\"{executed}\",{}", fs_pl(fs, pl));
            for (b, c) in WAIT_BUCKETS.iter().zip(buckets) {
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {c}");
            }
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
            let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
        }
        out
    }
}

/// A max-in-flight slot, given back when dropped.
struct InflightSlot {
    apf: Arc<Apf>,
    index: usize,
}

impl Drop for InflightSlot {
    fn drop(&mut self) {
        let mut inner = self.apf.lock();
        inner.inflight[self.index] = inner.inflight[self.index].saturating_sub(1);
    }
}

/// Upstream's answer to a request APF (or the in-flight limit) turns away.
fn too_many() -> Response {
    let mut err =
        ApiError::too_many_requests("Too many requests, please try again later.", Vec::new());
    err.details = Some(serde_json::json!({"retryAfterSeconds": 1}));
    let mut resp = err.into_response();
    resp.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        HeaderValue::from_static("1"),
    );
    resp.extensions_mut().insert(crate::metrics::Terminated);
    resp
}

fn with_uids(mut resp: Response, (fs, pl): &(String, String)) -> Response {
    for (name, uid) in [(FLOW_SCHEMA_UID, fs), (PRIORITY_LEVEL_UID, pl)] {
        // none for the built-in stand-ins used before the stored objects are read
        if uid.is_empty() {
            continue;
        }
        if let Ok(v) = HeaderValue::from_str(uid) {
            resp.headers_mut().insert(name, v);
        }
    }
    resp
}

/// Upstream's work estimate, in seats: a LIST or a watch (its initial list) of a resource of
/// `n` objects takes `ceil(n / 100)` seats, 1 to 10 (kaze serves lists from the watch cache,
/// so every stored object counts, as upstream's estimate for cached lists); anything else
/// takes one.
fn list_seats(state: &AppState, info: &RequestInfo) -> u64 {
    if !info.resource_request || !matches!(info.verb.as_str(), "list" | "watch") {
        return 1;
    }
    let served = state.crds.snapshot();
    let Some(def) = served
        .registry
        .get(&info.group, &info.version, &info.resource)
    else {
        return 1;
    };
    let stored = state.cache.resource(def).map_or(0, |rc| rc.len() as u64);
    stored.div_ceil(OBJECTS_PER_SEAT).clamp(1, MAX_SEATS)
}

/// The filter, below authentication and audit (it sees the impersonated user, and the audit
/// log records what it refuses) and above authorization, as upstream orders them.
pub async fn filter(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    // the deadline filter (`crate::timeout`), further out, has parsed it
    let info = match req.extensions().get::<RequestInfo>() {
        Some(info) => info.clone(),
        None => RequestInfo::parse(req.method(), req.uri().path(), req.uri().query()),
    };
    if info.long_running() && info.verb != "watch" {
        return next.run(req).await;
    }
    let user = req
        .extensions()
        .get::<UserInfo>()
        .cloned()
        .unwrap_or_else(UserInfo::anonymous);
    let apf = state.apf.clone();
    if !apf.limits.priority_and_fairness {
        if info.long_running() || user.groups.iter().any(|g| g == "system:masters") {
            return next.run(req).await;
        }
        let Some(_slot) = apf.take_inflight(info.read_only()) else {
            crate::router::discard_body(req.into_body()).await;
            return too_many();
        };
        return next.run(req).await;
    }
    let (admission, uids) = apf.admit(&info, &user, list_seats(&state, &info));
    let seat = match admission {
        Admission::Run(seat) => Some(seat),
        Admission::Wait(place) => place.wait().await,
        Admission::Reject => None,
    };
    let Some(seat) = seat else {
        crate::router::discard_body(req.into_body()).await;
        return with_uids(too_many(), &uids);
    };
    let resp = next.run(req).await;
    drop(seat);
    with_uids(resp, &uids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo::named(name, groups)
    }

    #[test]
    fn request_info_is_parsed_from_the_url_as_upstream() {
        let get = |p: &str, q: Option<&str>| RequestInfo::parse(&Method::GET, p, q);
        let pod = get("/api/v1/namespaces/ns/pods/p", None);
        assert_eq!(
            (
                pod.verb.as_str(),
                pod.namespace.as_str(),
                pod.resource.as_str()
            ),
            ("get", "ns", "pods")
        );
        let w = get("/apis/apps/v1/deployments", Some("watch=true"));
        assert_eq!((w.verb.as_str(), w.group.as_str()), ("watch", "apps"));
        assert!(w.long_running());
        let log = get("/api/v1/namespaces/ns/pods/p/log", None);
        assert_eq!(log.subresource, "log");
        assert!(log.long_running());
        // a namespace's own path: in that namespace, as upstream's RequestInfo has it
        let ns = get("/api/v1/namespaces/team", None);
        assert_eq!(
            (ns.resource.as_str(), ns.namespace.as_str()),
            ("namespaces", "team")
        );
        let fin = RequestInfo::parse(&Method::PUT, "/api/v1/namespaces/team/finalize", None);
        assert_eq!(
            (
                fin.verb.as_str(),
                fin.resource.as_str(),
                fin.subresource.as_str()
            ),
            ("update", "namespaces", "finalize")
        );
        let dc = RequestInfo::parse(&Method::DELETE, "/api/v1/namespaces/a/configmaps", None);
        assert_eq!(dc.verb, "deletecollection");
        for p in ["/healthz", "/apis", "/apis/apps/v1", "/api/v1"] {
            let i = get(p, None);
            assert!(!i.resource_request, "{p}");
            assert_eq!(i.verb, "get");
        }
    }

    #[test]
    fn schemas_match_subjects_and_rules_as_upstream() {
        let fs = Schema::from_object(&json!({"metadata": {"name": "s"}, "spec": {
        "priorityLevelConfiguration": {"name": "l"}, "matchingPrecedence": 10,
        "rules": [{
            "subjects": [{"kind": "ServiceAccount", "serviceAccount": {"namespace": "ci", "name": "*"}},
                {"kind": "Group", "group": {"name": "ops"}}],
            "resourceRules": [{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods/log", "configmaps"],
                "namespaces": ["ci"]}],
            "nonResourceRules": [{"verbs": ["get"], "nonResourceURLs": ["/metrics", "/debug/*"]}],
        }]}}));
        let sa = user(
            "system:serviceaccount:ci:runner",
            &["system:serviceaccounts"],
        );
        let cms = RequestInfo::parse(&Method::GET, "/api/v1/namespaces/ci/configmaps", None);
        assert!(fs.matches(&cms, &sa));
        let elsewhere = RequestInfo::parse(&Method::GET, "/api/v1/namespaces/dev/configmaps", None);
        assert!(!fs.matches(&elsewhere, &sa), "other namespace");
        let write = RequestInfo::parse(&Method::POST, "/api/v1/namespaces/ci/configmaps", None);
        assert!(!fs.matches(&write, &sa), "verb not listed");
        let pods = RequestInfo::parse(&Method::GET, "/api/v1/namespaces/ci/pods/p", None);
        assert!(!fs.matches(&pods, &sa), "only the log subresource");
        let log = RequestInfo::parse(&Method::GET, "/api/v1/namespaces/ci/pods/p/log", None);
        assert!(fs.matches(&log, &sa));
        let nodes = RequestInfo::parse(&Method::GET, "/api/v1/nodes", None);
        assert!(!fs.matches(&nodes, &sa), "cluster scope not allowed");
        let other_sa = user("system:serviceaccount:dev:runner", &[]);
        assert!(!fs.matches(&cms, &other_sa));
        let op = user("jane", &["ops"]);
        assert!(fs.matches(
            &RequestInfo::parse(&Method::GET, "/debug/pprof/heap", None),
            &op
        ));
        assert!(fs.matches(&RequestInfo::parse(&Method::GET, "/metrics", None), &op));
        assert!(!fs.matches(&RequestInfo::parse(&Method::GET, "/debug", None), &op));
        assert!(!fs.matches(&RequestInfo::parse(&Method::POST, "/metrics", None), &op));
    }

    #[test]
    fn the_dealer_deals_distinct_queues_of_the_deck() {
        for hash in [0u64, 1, 7, 12345, u64::MAX, 0xdead_beef_cafe] {
            let hand = deal(hash, 16, 6);
            assert_eq!(hand.len(), 6);
            let mut sorted = hand.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(sorted.len(), 6, "{hand:?}");
            assert!(hand.iter().all(|c| *c < 16), "{hand:?}");
        }
        assert_eq!(deal(99, 1, 8), [0], "a hand is never larger than the deck");
    }

    #[test]
    fn a_queued_request_waits_for_all_its_seats_and_the_queue_keeps_its_order() {
        let apf = Arc::new(Apf::new(Limits {
            priority_and_fairness: true,
            max_requests_inflight: 2,
            max_mutating_requests_inflight: 1,
        }));
        let level = json!({"metadata": {"name": "q", "uid": "l-1"}, "spec": {"type": "Limited",
            "limited": {"nominalConcurrencyShares": 100000, "limitResponse": {"type": "Queue",
                "queuing": {"queues": 1, "handSize": 1, "queueLengthLimit": 5}}}}});
        let schema = json!({"metadata": {"name": "s", "uid": "s-1"}, "spec": {
            "priorityLevelConfiguration": {"name": "q"}, "matchingPrecedence": 10,
            "rules": [{"subjects": [{"kind": "User", "user": {"name": "u"}}],
                "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                    "namespaces": ["*"], "clusterScope": true}]}]}});
        apf.configure(&[schema], &[level]);
        assert_eq!(apf.lock().levels["q"].limit, 3);
        let u = user("u", &["system:authenticated"]);
        let info = RequestInfo::parse(&Method::GET, "/api/v1/configmaps", None);
        let admit = |seats| match apf.admit(&info, &u, seats) {
            (Admission::Run(seat), uids) => {
                assert_eq!(uids, ("s-1".to_string(), "l-1".to_string()));
                Ok(seat)
            }
            (Admission::Wait(place), _) => Err(place),
            (Admission::Reject, _) => panic!("rejected"),
        };
        let Ok(first) = admit(1) else {
            panic!("a seat is free")
        };
        let Err(mut big) = admit(3) else {
            panic!("two seats free, three needed")
        };
        let Err(mut small) = admit(1) else {
            panic!("queued behind the big one")
        };
        assert!(big.grant.try_recv().is_err());
        drop(first);
        // the big one runs on all three seats; the small one still waits for one
        assert!(big.grant.try_recv().is_ok());
        big.settled = true;
        assert!(small.grant.try_recv().is_err());
        assert_eq!(apf.lock().levels["q"].executing, 3);
        drop(Seat {
            apf: apf.clone(),
            held: Some(("s".into(), "q".into(), 3)),
        });
        assert!(small.grant.try_recv().is_ok());
        small.settled = true;
        assert_eq!(apf.lock().levels["q"].executing, 1);
        // a request asking more seats than its level has asks for all of them
        assert!(admit(7).is_err(), "clamped to three seats, one in use");
    }

    #[test]
    fn levels_get_their_share_of_the_server_limit() {
        let apf = Apf::new(Limits {
            priority_and_fairness: true,
            max_requests_inflight: 400,
            max_mutating_requests_inflight: 200,
        });
        let inner = apf.lock();
        // upstream's figures for the default configuration: 245 shares over 600 seats
        let limit = |n: &str| inner.levels[n].limit;
        assert_eq!(limit("catch-all"), 13);
        assert_eq!(limit("global-default"), 49);
        assert_eq!(limit("workload-low"), 245);
        assert_eq!(limit("system"), 74);
        assert_eq!(limit("leader-election"), 25);
        let order: Vec<&str> = inner.schemas.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(order[..3], ["exempt", "probes", "system-leader-election"]);
        assert_eq!(order.last(), Some(&"catch-all"));
    }
}
