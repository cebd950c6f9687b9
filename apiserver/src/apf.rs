//! API Priority and Fairness applied to requests, as upstream's `WithPriorityAndFairness`
//! filter does it: every request (but the long-running ones other than watches) is
//! classified by the first FlowSchema that matches it (by `matchingPrecedence`, then name)
//! into that schema's priority level and a flow (the schema plus the user or namespace its
//! distinguisher names); the response says where it went in
//! `X-Kubernetes-PF-FlowSchema-UID` and `X-Kubernetes-PF-PriorityLevel-UID`.
//!
//! An `Exempt` level runs its requests at once. A `Limited` level runs at most its current
//! concurrency limit at a time: nominally `ceil(server limit * its shares / all levels'
//! shares)`, the server limit being `--max-requests-inflight` plus
//! `--max-mutating-requests-inflight`, and moved by borrowing (below). Past that, a
//! `Reject` level answers 429 at once. A `Queue` level shuffle-shards the flow onto
//! `handSize` of its `queues` and queues the request in the one with the least work
//! waiting (429 when the level's seats are all taken and that queue already holds
//! `queueLengthLimit`, or after waiting a quarter of the request's deadline: 15 s for the
//! default 60 s; 15 s for a watch).
//! Queued requests are dispatched by upstream's fair queuing for server requests: each level
//! keeps a virtual time `R` (the seat-seconds each active queue has been entitled to), each
//! queue the virtual time its next request is due; the head request due first runs when
//! its seats are free (the rest wait behind a head that does not fit yet). A request is
//! charged 3 ms of its seats when dispatched and its real duration when it ends, so a flow
//! of long requests yields to the others.
//!
//! Seats per request are upstream's work estimates: a LIST (and a watch, for its initial
//! list) takes one per 100 objects of its resource, 1 to 10; a create, update, patch or
//! delete takes one, and with 10 or more watches open on its resource (in its namespace or
//! across all) also a seat per 10 watches for 5 ms after it is answered (the events it
//! sends; a service account token's create sends none). No request takes more than its
//! level's maximum: `ceil(nominal limit / handSize)` for a queuing level, at most 10.
//! Upstream's three debug dumps are served at
//! `/debug/api_priority_and_fairness/dump_{priority_levels,queues,requests}`.
//!
//! Levels lend and borrow seats as upstream's do ([`Apf::adjust_borrowing`], every 10 s):
//! a level's current limit follows its seat demand, between its nominal seats less
//! `lendablePercent` and plus `borrowingLimitPercent` (unlimited when unset).
//!
//! With `--enable-priority-and-fairness=false` the older max-in-flight filter applies
//! instead: at most `--max-requests-inflight` read-only and
//! `--max-mutating-requests-inflight` mutating requests at once (0: no limit), `system:masters`
//! and long-running requests not counted, the rest answered 429.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

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
/// How long a request without a deadline (a watch) may wait in a queue (upstream's
/// `defaultRequestWaitLimit`); one with a deadline waits a quarter of it ...
const QUEUE_WAIT: Duration = Duration::from_secs(15);
/// ... but never more than this (upstream's `maxRequestWaitLimit`).
const MAX_QUEUE_WAIT: Duration = Duration::from_secs(60);
/// Upstream's work estimator: a LIST (or a watch's initial list) takes a seat per this many
/// objects of its resource, ...
const OBJECTS_PER_SEAT: u64 = 100;
/// ... and at most this many seats.
const MAX_SEATS: u64 = 10;
/// The buckets of `apiserver_flowcontrol_request_{wait_duration,execution}_seconds`
/// (upstream's; 15 s since 1.28, the default queue wait).
const DURATION_BUCKETS: &[f64] = &[
    0.0, 0.005, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0,
];
/// `apiserver_flowcontrol_work_estimated_seats`' buckets (upstream's: a request takes at
/// most 10 seats).
const SEATS_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 10.0];
/// `apiserver_flowcontrol_watch_count_samples`' buckets (upstream's).
const WATCH_COUNT_BUCKETS: &[f64] = &[0.0, 1.0, 10.0, 100.0, 1000.0, 10000.0];

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
    /// The object's name, for a request naming one.
    pub name: String,
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
            name: String::new(),
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
        info.name = rest.get(1).map(|s| s.to_string()).unwrap_or_default();
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

/// Work, in upstream's fixed-point seat-seconds (`SeatSeconds`: 1e8 to a seat-second).
type SeatSeconds = u64;
const SEAT_SECOND: u64 = 100_000_000;
/// What fair queuing charges a request's initial seats before its real duration is known
/// (upstream's `estimatedServiceDuration`, the `G` of its design).
const ESTIMATED_SERVICE: Duration = Duration::from_millis(3);
/// Upstream's mutating work estimator: a write with this many watchers or more holds a seat
/// per this many watchers ...
const WATCHES_PER_SEAT: u64 = 10;
/// ... for this long per event after it is answered.
const EVENT_ADDITIONAL: Duration = Duration::from_millis(5);

/// `seats` for `d`, in seat-seconds (upstream's `SeatsTimesDuration`).
fn seats_times(seats: f64, d: Duration) -> SeatSeconds {
    (seats * d.as_nanos() as f64 / (1e9 / SEAT_SECOND as f64))
        .round()
        .max(0.0) as u64
}

/// Upstream's `SeatSeconds.String()`: `2.00300000ss`.
fn seat_seconds_text(ss: SeatSeconds) -> String {
    format!("{}.{:08}ss", ss / SEAT_SECOND, ss % SEAT_SECOND)
}

/// Upstream's `WorkEstimate`: the seats a request takes while it runs, and the seats it
/// keeps for `additional` after it is answered (a write, for the watch events it causes).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct WorkEstimate {
    initial: u64,
    final_seats: u64,
    additional: Duration,
}

impl WorkEstimate {
    /// A request of `initial` seats (a LIST's estimate, else 1) and `watchers` interested
    /// watches, on a level whose requests take at most `max_seats`.
    fn new(initial: u64, watchers: u64, max_seats: u64) -> WorkEstimate {
        let max_seats = max_seats.max(1);
        let initial = initial.clamp(1, max_seats);
        if watchers < WATCHES_PER_SEAT {
            return WorkEstimate {
                initial,
                ..Default::default()
            };
        }
        // the work stays the same when the seats are capped: fewer seats, held longer
        let wanted = watchers.div_ceil(WATCHES_PER_SEAT);
        let work = seats_times(wanted as f64, EVENT_ADDITIONAL);
        let final_seats = wanted.min(max_seats);
        let nanos = work as f64 / final_seats as f64 * (1e9 / SEAT_SECOND as f64);
        WorkEstimate {
            initial,
            final_seats,
            additional: Duration::from_nanos(nanos.round() as u64),
        }
    }

    fn max_seats(&self) -> u64 {
        self.initial.max(self.final_seats)
    }

    /// What fair queuing charges the request's queue when it is dispatched.
    fn total_work(&self) -> SeatSeconds {
        seats_times(self.initial as f64, ESTIMATED_SERVICE)
            + seats_times(self.final_seats as f64, self.additional)
    }

    fn lingers(&self) -> bool {
        self.final_seats > 0 && !self.additional.is_zero()
    }
}

/// A request as the debug dumps show it.
#[derive(Debug, Clone)]
struct Described {
    schema: String,
    /// The flow distinguisher (the user or namespace the schema's method names), or "".
    flow: String,
    user: String,
    info: Arc<RequestInfo>,
    work: WorkEstimate,
    arrived: SystemTime,
    /// When it was dispatched (wall clock, monotonic).
    started: Option<(SystemTime, Instant)>,
}

struct Waiter {
    id: u64,
    /// The level's virtual time when it arrived.
    arrival_r: SeatSeconds,
    since: Instant,
    grant: oneshot::Sender<()>,
    d: Described,
}

/// One fair queue of a level: its waiting and executing requests and where it stands in
/// virtual time.
#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiter>,
    executing: BTreeMap<u64, Described>,
    seats_in_use: u64,
    /// The virtual time at which the queue's next request is due (upstream's
    /// `nextDispatchR`): advanced by each dispatched request's work, corrected by its real
    /// duration when it ends.
    next_dispatch_r: SeatSeconds,
}

impl Queue {
    fn idle(&self) -> bool {
        self.waiting.is_empty() && self.executing.is_empty()
    }

    /// The waiting requests' initial seats, maximum seats and work (upstream's `QueueSum`).
    fn sums(&self) -> (u64, u64, SeatSeconds) {
        self.waiting.iter().fold((0, 0, 0), |(i, m, w), r| {
            (
                i + r.d.work.initial,
                m + r.d.work.max_seats(),
                w + r.d.work.total_work(),
            )
        })
    }

    /// Upstream's anti-windup: a queue's next dispatch never comes before the arrival (in
    /// virtual time) of its oldest waiting request.
    fn bound(&mut self) {
        if let Some(w) = self.waiting.front() {
            self.next_dispatch_r = self.next_dispatch_r.max(w.arrival_r);
        }
    }
}

struct Level {
    uid: String,
    exempt: bool,
    shares: u64,
    /// `lendablePercent`, `borrowingLimitPercent` (none: no limit).
    lendable_percent: u64,
    borrowing_percent: Option<u64>,
    /// The nominal concurrency limit: `ceil(server limit * shares / all shares)`.
    nominal: u64,
    /// The current limit: the nominal one, moved by borrowing (exempt: none).
    limit: u64,
    /// The seats asked for (in use and waiting) over the borrowing period, and their
    /// smoothed envelope (upstream's `seatDemandStats`).
    demand: Demand,
    smoothed: f64,
    /// The last adjustment's figures, for the metrics.
    adjusted: Adjusted,
    /// The most seats one request takes here (upstream: `ceil(limit / handSize)`, at most 10).
    max_seats: u64,
    /// None: `Reject` (or exempt).
    queuing: Option<Queuing>,
    /// Seats in use, lingering writes' included.
    seats_in_use: u64,
    /// Requests executing.
    executing: u64,
    /// More than `queuing.queues` while excess ones drain.
    queues: Vec<Queue>,
    /// Requests executing without a queue: an exempt or `Reject` level's.
    queueless: BTreeMap<u64, Described>,
    /// The queue dispatched from last.
    robin: usize,
    enqueues: usize,
    /// The level's virtual time (upstream's `currentR`): the seat-seconds each active queue
    /// has been entitled to so far.
    current_r: SeatSeconds,
    last_real: Instant,
    dispatched: u64,
    rejected: u64,
    timed_out: u64,
    cancelled: u64,
    /// No longer configured: removed once idle (upstream: quiescing).
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
            lendable_percent: part["lendablePercent"].as_u64().unwrap_or(0).min(100),
            borrowing_percent: part["borrowingLimitPercent"].as_u64(),
            nominal: 0,
            limit: 0,
            demand: Demand::new(Instant::now()),
            smoothed: 0.0,
            adjusted: Adjusted::default(),
            max_seats: MAX_SEATS,
            queuing,
            seats_in_use: 0,
            executing: 0,
            queues: Vec::new(),
            queueless: BTreeMap::new(),
            robin: 0,
            enqueues: 0,
            current_r: 0,
            last_real: Instant::now(),
            dispatched: 0,
            rejected: 0,
            timed_out: 0,
            cancelled: 0,
            removed: false,
        }
    }

    fn waiting(&self) -> usize {
        self.queues.iter().map(|q| q.waiting.len()).sum()
    }

    /// The configured bounds of the current limit: the nominal seats less the lendable
    /// ones, and plus the ones it may borrow (upstream's `MaxInt32` of them when unlimited).
    fn bounds(&self) -> (f64, f64) {
        let nominal = self.nominal as f64;
        let lendable = (nominal * self.lendable_percent as f64 / 100.0).round();
        let borrowing = self.borrowing_percent.map_or(f64::from(i32::MAX), |p| {
            (nominal * p as f64 / 100.0).round()
        });
        (nominal - lendable, nominal + borrowing)
    }

    fn idle(&self) -> bool {
        self.waiting() == 0 && self.executing == 0
    }

    /// Advance the virtual time to `now` (upstream's `syncTimeLocked`): each active queue
    /// is entitled to an equal share of the seats the queues ask for, up to the limit.
    /// Called before any change to the queues.
    fn sync_time(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last_real);
        self.last_real = now;
        let (mut active, mut requested, mut waiting) = (0u64, 0u64, 0u64);
        for q in &self.queues {
            let asked = q.sums().1;
            requested += q.seats_in_use + asked;
            waiting += asked;
            if !q.idle() {
                active += 1;
            }
        }
        // the demand that held since the last change
        self.demand
            .add((self.seats_in_use + waiting) as f64, elapsed);
        if active > 0 {
            let ratio = requested.min(self.limit) as f64 / active as f64;
            self.current_r = self.current_r.saturating_add(seats_times(ratio, elapsed));
        }
    }

    /// Whether a request of `seats` may start now (upstream's `canAccommodateSeatsLocked`).
    fn can_accommodate(&self, seats: u64) -> bool {
        if self.exempt {
            return true;
        }
        if seats > self.limit {
            // wider than the level: it runs alone
            return self.executing == 0;
        }
        self.seats_in_use + seats <= self.limit
    }

    /// Queues beyond the configured number that have drained go (only from the end, so
    /// the indexes held by executing requests stay good).
    fn trim_queues(&mut self) {
        let want = self.queuing.map_or(0, |q| q.queues);
        while self.queues.len() > want
            && self
                .queues
                .last()
                .is_some_and(|q| q.idle() && q.seats_in_use == 0)
        {
            self.queues.pop();
        }
        if self.robin >= self.queues.len() {
            self.robin = 0;
        }
    }
}

/// Upstream's seat demand integrator: the time-weighted average, deviation and maximum of
/// a level's seats asked for (in use plus waiting) over a borrowing period.
struct Demand {
    started: Instant,
    /// The integrals of the demand and of its square over the period, in seat-seconds.
    sum: f64,
    sum_sq: f64,
    max: f64,
}

impl Demand {
    fn new(now: Instant) -> Demand {
        Demand {
            started: now,
            sum: 0.0,
            sum_sq: 0.0,
            max: 0.0,
        }
    }

    /// `seats` asked for during `d`.
    fn add(&mut self, seats: f64, d: Duration) {
        let secs = d.as_secs_f64();
        self.sum += seats * secs;
        self.sum_sq += seats * seats * secs;
        self.max = self.max.max(seats);
    }

    /// The period's (average, standard deviation, maximum); a new period starts.
    fn take(&mut self, now: Instant) -> (f64, f64, f64) {
        let secs = now.saturating_duration_since(self.started).as_secs_f64();
        let out = if secs > 0.0 {
            let avg = self.sum / secs;
            let var = (self.sum_sq / secs - avg * avg).max(0.0);
            (avg, var.sqrt(), self.max)
        } else {
            (0.0, 0.0, self.max)
        };
        *self = Demand::new(now);
        out
    }
}

/// How often the levels' current limits are worked out again (upstream's
/// `borrowingAdjustmentPeriod`).
pub const BORROWING_PERIOD: Duration = Duration::from_secs(10);
/// Upstream's `seatDemandSmoothingCoefficient`.
const DEMAND_SMOOTHING: f64 = 0.977;

/// One level's part of the allocation problem: its bounds and the share it wants.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Wants {
    lower: f64,
    upper: f64,
    target: f64,
}

/// A level's seat demand statistics and allocation target at the last adjustment.
#[derive(Debug, Clone, Copy, Default)]
struct Adjusted {
    high: f64,
    average: f64,
    deviation: f64,
    target: f64,
}

/// Upstream's `MinTarget`: a smaller target (an idle level's) counts as this.
const MIN_TARGET: f64 = 0.001;

/// Upstream's `computeConcurrencyAllocation`: allocations summing to `total`, each
/// `clamp(fair * target, lower, upper)` for the one fair proportion that makes them add
/// up (returned with the allocations); None when the bounds cannot (their lower bounds
/// exceed the total, or their upper bounds fall short of it).
fn allocate(total: f64, wants: &[Wants]) -> Option<(Vec<f64>, f64)> {
    let at = |fair: f64| -> Vec<f64> {
        wants
            .iter()
            .map(|w| (fair * w.target.max(MIN_TARGET)).clamp(w.lower, w.upper))
            .collect()
    };
    let sum = |v: &[f64]| v.iter().sum::<f64>();
    let lowest: f64 = wants.iter().map(|w| w.lower).sum();
    let highest: f64 = wants.iter().map(|w| w.upper).sum();
    if lowest > total + 1e-9 || highest < total - 1e-9 {
        return None;
    }
    // the sum grows with the proportion: find it by bisection
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    while sum(&at(hi)) < total && hi < 1e12 {
        hi *= 2.0;
    }
    for _ in 0..200 {
        let mid = (lo + hi) / 2.0;
        if sum(&at(mid)) < total {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let out = at(hi);
    ((sum(&out) - total).abs() < 0.5).then_some((out, hi))
}

type Key = (String, String);

/// A Prometheus histogram: the observations at most each bound (cumulative), their sum and
/// count.
#[derive(Debug, Clone)]
struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: vec![0; bounds.len()],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        for (b, n) in self.bounds.iter().zip(&mut self.buckets) {
            if v <= *b {
                *n += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    /// The series of `name{labels}`, in the exposition format.
    fn write(&self, out: &mut String, name: &str, labels: &str) {
        for (b, n) in self.bounds.iter().zip(&self.buckets) {
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {n}");
        }
        let count = self.count;
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Observe `v` in `map`'s histogram of `key`, one of `bounds` if new.
fn observe<K: Ord>(map: &mut BTreeMap<K, Histogram>, key: K, bounds: &'static [f64], v: f64) {
    map.entry(key)
        .or_insert_with(|| Histogram::new(bounds))
        .observe(v);
}

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
    /// The seats of the work estimates (their maximum of initial and final seats) and the
    /// watches a write's estimate counted, for the non-exempt levels (upstream estimates no
    /// exempt request).
    estimated_seats: BTreeMap<Key, Histogram>,
    watch_counts: BTreeMap<Key, Histogram>,
    /// (schema, level, `watch` or `regular`) -> how long requests executed (a watch: until
    /// its response started).
    executions: BTreeMap<(String, String, &'static str), Histogram>,
    /// The max-in-flight filter's counts: read-only, mutating.
    inflight: [u32; 2],
    /// The fair proportion of the last borrowing adjustment (upstream's `seat_fair_frac`).
    fair_frac: f64,
    /// Open watches by (group, resource, namespace; "" for all namespaces).
    watches: HashMap<(String, String, String), u64>,
}

impl Inner {
    fn reject(&mut self, schema: &str, level: &str, reason: &'static str) {
        *self
            .rejected
            .entry((schema.to_string(), level.to_string(), reason))
            .or_default() += 1;
    }

    fn observe_wait(&mut self, schema: &str, level: &str, executed: bool, secs: f64) {
        let key = (schema.to_string(), level.to_string(), executed);
        observe(&mut self.waits, key, DURATION_BUCKETS, secs);
    }

    /// A request's work estimate, `watchers` being the watches counted for a write (none
    /// for other requests), as upstream's work estimator observes it.
    fn observe_estimate(&mut self, schema: &str, level: &str, seats: u64, watchers: Option<u64>) {
        let key = (schema.to_string(), level.to_string());
        if let Some(n) = watchers {
            observe(
                &mut self.watch_counts,
                key.clone(),
                WATCH_COUNT_BUCKETS,
                n as f64,
            );
        }
        observe(&mut self.estimated_seats, key, SEATS_BUCKETS, seats as f64);
    }

    /// The metrics of a request that starts executing with `seats`.
    fn start_executing(&mut self, schema: &str, level: &str, seats: u64) {
        let key = (schema.to_string(), level.to_string());
        *self.dispatched.entry(key.clone()).or_default() += 1;
        *self.executing.entry(key.clone()).or_default() += 1;
        *self.executing_seats.entry(key).or_default() += seats as i64;
    }

    /// The watches a write to `info`'s object notifies (upstream's watch tracker counts
    /// the resource's watches across namespaces and those of the object's namespace).
    fn interested_watches(&self, info: &RequestInfo) -> u64 {
        let count = |ns: &str| {
            self.watches
                .get(&(info.group.clone(), info.resource.clone(), ns.to_string()))
                .copied()
                .unwrap_or(0)
        };
        let mut n = count("");
        if !info.namespace.is_empty() {
            n += count(&info.namespace);
        }
        n
    }

    /// Dispatch as many of `level`'s queued requests as its free seats allow, by fair
    /// queuing: each time the head of the queue whose next dispatch (plus that request's
    /// work) comes first in virtual time, round-robin among equals; a head that does not fit
    /// waits for seats, and so does everything behind it (upstream's
    /// `dispatchAsMuchAsPossibleLocked`).
    fn dispatch(&mut self, level: &str) {
        let mut started = Vec::new();
        let Some(l) = self.levels.get_mut(level) else {
            return;
        };
        let now = Instant::now();
        l.sync_time(now);
        while l.waiting() > 0 && l.seats_in_use < l.limit {
            let n = l.queues.len();
            let mut best: Option<(usize, SeatSeconds)> = None;
            for k in 1..=n {
                let i = (l.robin + k) % n;
                let q = &l.queues[i];
                if let Some(w) = q.waiting.front() {
                    let finish = q.next_dispatch_r + w.d.work.total_work();
                    if best.is_none_or(|(_, f)| finish < f) {
                        best = Some((i, finish));
                    }
                }
            }
            let Some((i, _)) = best else {
                break;
            };
            let seats = l.queues[i]
                .waiting
                .front()
                .map_or(1, |w| w.d.work.max_seats());
            if !l.can_accommodate(seats) {
                break;
            }
            l.robin = i;
            let q = &mut l.queues[i];
            let mut w = q.waiting.pop_front().expect("a non-empty queue");
            let waited = w.since.elapsed().as_secs_f64();
            let gone = w.grant.send(()).is_err();
            started.push((w.d.schema.clone(), seats, waited, !gone));
            if !gone {
                // a waiter that went away withdrew itself; one that has not yet can run
                w.d.started = Some((SystemTime::now(), now));
                q.next_dispatch_r += w.d.work.total_work();
                q.seats_in_use += seats;
                q.executing.insert(w.id, w.d);
                l.seats_in_use += seats;
                l.executing += 1;
                l.dispatched += 1;
            }
            q.bound();
        }
        let remove = l.removed && l.idle() && l.seats_in_use == 0;
        if remove {
            self.levels.remove(level);
        }
        for (schema, seats, waited, ran) in started {
            *self
                .in_queue
                .entry((schema.clone(), level.to_string()))
                .or_default() -= 1;
            if ran {
                self.observe_wait(&schema, level, true, waited);
                self.start_executing(&schema, level, seats);
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

/// A request holding seats: where it runs and what it takes.
#[derive(Debug, Clone)]
struct Held {
    schema: String,
    level: String,
    id: u64,
    /// None: it runs without a queue.
    queue: Option<usize>,
    work: WorkEstimate,
    /// A watch (its execution is its initial stage).
    watch: bool,
}

/// A request's seats, given back (and handed on) when dropped; a write's final seats stay
/// taken for its additional latency.
struct Seat {
    apf: Arc<Apf>,
    held: Option<Held>,
    /// When the request got its seats (its execution started).
    since: Instant,
}

impl Drop for Seat {
    fn drop(&mut self) {
        if let Some(h) = self.held.take() {
            self.apf.finish(h, self.since.elapsed());
        }
    }
}

/// A queued request's place. If the request goes away while waiting (the client hung up),
/// the place is given up, or the seat it was just given is handed on.
struct Place {
    apf: Arc<Apf>,
    held: Held,
    grant: oneshot::Receiver<()>,
    /// The wait ended (with a seat or a refusal) and was acted on.
    settled: bool,
}

impl Place {
    fn seat(&mut self) -> Seat {
        self.settled = true;
        Seat {
            apf: self.apf.clone(),
            held: Some(self.held.clone()),
            since: Instant::now(),
        }
    }

    /// Wait for a seat, up to `limit`.
    async fn wait(mut self, limit: Duration) -> Option<Seat> {
        let granted = tokio::select! {
            r = &mut self.grant => r.is_ok(),
            _ = tokio::time::sleep(limit) => {
                // still queued: timed out; else the seat came as the time ran out
                !self.apf.withdraw(&self.held, "time-out") && self.grant.try_recv().is_ok()
            }
        };
        self.settled = true;
        granted.then(|| self.seat())
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        if !self.apf.withdraw(&self.held, "cancelled") && self.grant.try_recv().is_ok() {
            drop(self.seat());
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
    /// executing and queued requests carry over (fewer queues: the excess ones drain); a
    /// removed level drains.
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
            l.nominal = match total {
                0 => 0,
                _ => (server * l.shares).div_ceil(total),
            };
            l.limit = if l.exempt { u64::MAX } else { l.nominal };
            // upstream's per-level cap on a request's seats
            l.max_seats = match (l.exempt, l.queuing) {
                (true, _) => MAX_SEATS,
                (false, Some(q)) => l.nominal.div_ceil(q.hand.max(1) as u64),
                (false, None) => l.nominal,
            }
            .clamp(1, MAX_SEATS);
        }
        let mut sorted: Vec<Schema> = schemas
            .iter()
            .map(Schema::from_object)
            .filter(|s| wanted.contains_key(&s.level))
            .collect();
        sorted.sort_by(|a, b| (a.precedence, &a.name).cmp(&(b.precedence, &b.name)));

        let mut inner = self.lock();
        inner.schemas = sorted;
        let now = Instant::now();
        let names: Vec<String> = inner.levels.keys().cloned().collect();
        for name in names {
            let l = inner.levels.get_mut(&name).expect("listed");
            l.sync_time(now);
            match wanted.remove(&name) {
                Some(new) => {
                    l.uid = new.uid;
                    l.exempt = new.exempt;
                    l.shares = new.shares;
                    l.lendable_percent = new.lendable_percent;
                    l.borrowing_percent = new.borrowing_percent;
                    // the borrowed limit stands until the next adjustment unless the
                    // nominal one changed
                    if new.nominal != l.nominal || new.exempt != l.exempt {
                        l.limit = new.limit;
                    }
                    l.nominal = new.nominal;
                    l.max_seats = new.max_seats;
                    l.queuing = new.queuing;
                    l.removed = false;
                }
                None => l.removed = true,
            }
            let want = l.queuing.map_or(0, |q| q.queues);
            while l.queues.len() < want {
                l.queues.push(Queue::default());
            }
            l.trim_queues();
        }
        for (name, mut l) in wanted {
            l.queues = (0..l.queuing.map_or(0, |q| q.queues))
                .map(|_| Queue::default())
                .collect();
            inner.levels.insert(name, l);
        }
        // more seats may let waiting requests run
        let names: Vec<String> = inner.levels.keys().cloned().collect();
        for name in names {
            inner.dispatch(&name);
        }
    }

    /// Classify the request and take a seat, a place in a queue, or a refusal. `seats` is
    /// its initial estimate (a LIST's, else 1); a write's final seats come from the watches
    /// open on its resource. Also the (schema, level) uids for the response headers.
    fn admit(
        self: &Arc<Self>,
        info: &Arc<RequestInfo>,
        user: &UserInfo,
        seats: u64,
    ) -> (Admission, (String, String)) {
        let mut inner = self.lock();
        let now = Instant::now();
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
            return (Admission::Run(self.unheld()), Default::default());
        };
        // a service account token's create sends no events (upstream's
        // isRequestExemptFromWatchEvents)
        let watchers = (info.resource_request
            && matches!(info.verb.as_str(), "create" | "update" | "patch" | "delete")
            && !(info.resource == "serviceaccounts" && info.subresource == "token"))
            .then(|| inner.interested_watches(info));
        let id = inner.next_id + 1;
        inner.next_id = id;
        let Some((exempt, max_seats)) = inner.levels.get(&pl).map(|l| (l.exempt, l.max_seats))
        else {
            // schemas naming no level are not kept
            return (Admission::Run(self.unheld()), (fs_uid, String::new()));
        };
        let work = WorkEstimate::new(seats, watchers.unwrap_or(0), max_seats);
        if !exempt {
            // observed before the request is queued or turned away, as upstream's
            inner.observe_estimate(&fs, &pl, work.max_seats(), watchers);
        }
        let Some(level) = inner.levels.get_mut(&pl) else {
            return (Admission::Run(self.unheld()), (fs_uid, String::new()));
        };
        let uids = (fs_uid, level.uid.clone());
        let seats = work.max_seats();
        let mut d = Described {
            schema: fs.clone(),
            flow,
            user: user.name.clone(),
            info: Arc::clone(info),
            work,
            arrived: SystemTime::now(),
            started: None,
        };
        let mut held = Held {
            schema: fs.clone(),
            level: pl.clone(),
            id,
            queue: None,
            work,
            watch: info.verb == "watch",
        };
        level.sync_time(now);
        let Some(q) = level.queuing else {
            // exempt, or a Reject level: it runs now or not at all
            if !level.can_accommodate(seats) {
                level.rejected += 1;
                inner.reject(&fs, &pl, "concurrency-limit");
                inner.observe_wait(&fs, &pl, false, 0.0);
                return (Admission::Reject, uids);
            }
            d.started = Some((d.arrived, now));
            level.queueless.insert(id, d);
            level.seats_in_use += seats;
            level.executing += 1;
            level.dispatched += 1;
            inner.observe_wait(&fs, &pl, true, 0.0);
            inner.start_executing(&fs, &pl, seats);
            let seat = Seat {
                apf: self.clone(),
                held: Some(held),
                since: now,
            };
            return (Admission::Run(seat), uids);
        };
        // shuffle sharding: of the flow's hand of queues, the one with the least work
        // waiting, the scan starting at a rotating offset
        let hand = deal(
            flow_hash(&fs, &d.flow),
            q.queues.min(level.queues.len()),
            q.hand,
        );
        let offset = level.enqueues % hand.len().max(1);
        level.enqueues += 1;
        let Some(best) = (0..hand.len())
            .map(|i| hand[(offset + i) % hand.len()])
            .min_by_key(|i| level.queues[*i].sums().2)
        else {
            return (Admission::Run(self.unheld()), uids);
        };
        if level.seats_in_use >= level.limit && level.queues[best].waiting.len() >= q.max_len {
            level.rejected += 1;
            inner.reject(&fs, &pl, "queue-full");
            inner.observe_wait(&fs, &pl, false, 0.0);
            return (Admission::Reject, uids);
        }
        let current_r = level.current_r;
        let queue = &mut level.queues[best];
        if queue.idle() {
            // an idle queue starts at the present virtual time
            queue.next_dispatch_r = current_r;
        }
        let (grant, granted) = oneshot::channel();
        queue.waiting.push_back(Waiter {
            id,
            arrival_r: current_r,
            since: now,
            grant,
            d,
        });
        queue.bound();
        held.queue = Some(best);
        *inner.in_queue.entry((fs, pl.clone())).or_default() += 1;
        inner.dispatch(&pl);
        let mut place = Place {
            apf: self.clone(),
            held,
            grant: granted,
            settled: false,
        };
        // dispatched at once: it runs without waiting
        if place.grant.try_recv().is_ok() {
            return (Admission::Run(place.seat()), uids);
        }
        (Admission::Wait(place), uids)
    }

    /// A seat for a request APF does not account for.
    fn unheld(self: &Arc<Self>) -> Seat {
        Seat {
            apf: self.clone(),
            held: None,
            since: Instant::now(),
        }
    }

    /// Take the queued request `h` out of its queue: true if it was still waiting (counted
    /// as rejected for `reason`), false if it was already given a seat.
    fn withdraw(&self, h: &Held, reason: &'static str) -> bool {
        let mut inner = self.lock();
        let Some(l) = inner.levels.get_mut(&h.level) else {
            return false;
        };
        l.sync_time(Instant::now());
        let Some(q) = h.queue.and_then(|i| l.queues.get_mut(i)) else {
            return false;
        };
        let Some(at) = q.waiting.iter().position(|w| w.id == h.id) else {
            return false;
        };
        let w = q.waiting.remove(at).expect("found");
        q.bound();
        l.rejected += 1;
        match reason {
            "time-out" => l.timed_out += 1,
            _ => l.cancelled += 1,
        }
        l.trim_queues();
        *inner
            .in_queue
            .entry((h.schema.clone(), h.level.clone()))
            .or_default() -= 1;
        inner.reject(&h.schema, &h.level, reason);
        inner.observe_wait(&h.schema, &h.level, false, w.since.elapsed().as_secs_f64());
        inner.dispatch(&h.level);
        true
    }

    /// Request `h` has been answered (upstream's `finishRequestLocked`): its queue is
    /// charged its real duration instead of the estimate, and its seats are given back, a
    /// write's final seats only after its additional latency. It executed for `executed`
    /// (upstream's `ObserveExecutionDuration`, around the handler).
    fn finish(self: &Arc<Self>, h: Held, executed: Duration) {
        let mut inner = self.lock();
        let kind = if h.watch { "watch" } else { "regular" };
        let key = (h.schema.clone(), h.level.clone(), kind);
        observe(
            &mut inner.executions,
            key,
            DURATION_BUCKETS,
            executed.as_secs_f64(),
        );
        let key = (h.schema.clone(), h.level.clone());
        *inner.executing.entry(key).or_default() -= 1;
        let Some(l) = inner.levels.get_mut(&h.level) else {
            return;
        };
        let now = Instant::now();
        l.sync_time(now);
        l.executing = l.executing.saturating_sub(1);
        match h.queue.and_then(|i| l.queues.get_mut(i)) {
            Some(q) => {
                let ran = q
                    .executing
                    .remove(&h.id)
                    .and_then(|d| d.started)
                    .map_or(Duration::ZERO, |(_, at)| now.saturating_duration_since(at));
                let initial = h.work.initial as f64;
                if ran >= ESTIMATED_SERVICE {
                    q.next_dispatch_r += seats_times(initial, ran - ESTIMATED_SERVICE);
                } else {
                    q.next_dispatch_r = q
                        .next_dispatch_r
                        .saturating_sub(seats_times(initial, ESTIMATED_SERVICE - ran));
                }
                q.bound();
            }
            None => {
                l.queueless.remove(&h.id);
            }
        }
        let runtime = tokio::runtime::Handle::try_current();
        match runtime {
            Ok(rt) if h.work.lingers() => {
                let apf = self.clone();
                rt.spawn(async move {
                    tokio::time::sleep(h.work.additional).await;
                    let mut inner = apf.lock();
                    release(&mut inner, &h);
                });
            }
            _ => release(&mut inner, &h),
        }
    }

    /// Count an open watch of `info`'s resource until the guard is dropped.
    fn watching(self: &Arc<Self>, info: &RequestInfo) -> WatchGuard {
        let key = (
            info.group.clone(),
            info.resource.clone(),
            info.namespace.clone(),
        );
        *self.lock().watches.entry(key.clone()).or_default() += 1;
        WatchGuard {
            apf: self.clone(),
            key,
        }
    }

    /// `/debug/api_priority_and_fairness/<dump>`: upstream's three CSV-like tables (one row
    /// per priority level, per queue, or per request; `details` adds the requests' user and
    /// target), or None for another name.
    pub fn dump(&self, dump: &str, details: bool) -> Option<String> {
        let inner = self.lock();
        let mut levels: Vec<(&String, &Level)> = inner.levels.iter().collect();
        levels.sort_by_key(|(n, _)| *n);
        let mut rows: Vec<Vec<String>> = Vec::new();
        match dump {
            "dump_priority_levels" => {
                rows.push(
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
                        "CancelledRequests",
                    ]
                    .map(String::from)
                    .to_vec(),
                );
                for (name, l) in levels {
                    let active = l.queues.iter().filter(|q| !q.waiting.is_empty()).count();
                    rows.push(vec![
                        name.to_string(),
                        active.to_string(),
                        l.idle().to_string(),
                        l.removed.to_string(),
                        l.waiting().to_string(),
                        l.executing.to_string(),
                        l.dispatched.to_string(),
                        l.rejected.to_string(),
                        l.timed_out.to_string(),
                        l.cancelled.to_string(),
                    ]);
                }
            }
            "dump_queues" => {
                rows.push(
                    [
                        "PriorityLevelName",
                        "Index",
                        "PendingRequests",
                        "ExecutingRequests",
                        "SeatsInUse",
                        "NextDispatchR",
                        "InitialSeatsSum",
                        "MaxSeatsSum",
                        "TotalWorkSum",
                    ]
                    .map(String::from)
                    .to_vec(),
                );
                for (name, l) in levels {
                    for (i, q) in l.queues.iter().enumerate() {
                        let (initial, max, work) = q.sums();
                        rows.push(vec![
                            name.to_string(),
                            i.to_string(),
                            q.waiting.len().to_string(),
                            q.executing.len().to_string(),
                            q.seats_in_use.to_string(),
                            seat_seconds_text(q.next_dispatch_r),
                            initial.to_string(),
                            max.to_string(),
                            seat_seconds_text(work),
                        ]);
                    }
                }
            }
            "dump_requests" => {
                let mut head = vec![
                    "PriorityLevelName",
                    "FlowSchemaName",
                    "QueueIndex",
                    "RequestIndexInQueue",
                    "FlowDistingsher",
                    "ArriveTime",
                    "InitialSeats",
                    "FinalSeats",
                    "AdditionalLatency",
                    "StartTime",
                ];
                if details {
                    head.extend([
                        "UserName",
                        "Verb",
                        "APIPath",
                        "Namespace",
                        "Name",
                        "APIVersion",
                        "Resource",
                        "SubResource",
                    ]);
                }
                rows.push(head.into_iter().map(String::from).collect());
                let row = |level: &str, queue: i64, index: i64, d: &Described| {
                    let mut r = vec![
                        level.to_string(),
                        d.schema.clone(),
                        queue.to_string(),
                        index.to_string(),
                        d.flow.clone(),
                        rfc3339_nano(Some(d.arrived)),
                        d.work.initial.to_string(),
                        d.work.final_seats.to_string(),
                        crate::protobuf::go_duration(d.work.additional.as_nanos() as i64),
                        rfc3339_nano(d.started.map(|(at, _)| at)),
                    ];
                    if details {
                        let i = &d.info;
                        let api_version = match (i.group.as_str(), i.version.as_str()) {
                            ("", v) => v.to_string(),
                            (g, v) => format!("{g}/{v}"),
                        };
                        r.extend([
                            d.user.clone(),
                            i.verb.clone(),
                            i.path.clone(),
                            i.namespace.clone(),
                            i.name.clone(),
                            api_version,
                            i.resource.clone(),
                            i.subresource.clone(),
                        ]);
                    }
                    r
                };
                for (name, l) in levels {
                    for (iq, q) in l.queues.iter().enumerate() {
                        for (ir, w) in q.waiting.iter().enumerate() {
                            rows.push(row(name, iq as i64, ir as i64, &w.d));
                        }
                        for d in q.executing.values() {
                            rows.push(row(name, iq as i64, -1, d));
                        }
                    }
                    for d in l.queueless.values() {
                        rows.push(row(name, -1, -1, d));
                    }
                }
            }
            _ => return None,
        }
        Some(tab_rows(&rows))
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

    /// Work out the levels' current limits again from their seat demand over the last
    /// period (upstream's `updateBorrowingLocked`): a level may lend `lendablePercent` of its
    /// nominal seats and borrow up to `borrowingLimitPercent` more (no limit when unset); each
    /// wants the smoothed envelope (average plus deviation) of its demand, at least the
    /// demand's high watermark up to its nominal limit, and the server's seats are shared
    /// out in proportion to what the levels want within those bounds.
    pub fn adjust_borrowing(&self) {
        if !self.limits.priority_and_fairness {
            return;
        }
        let mut inner = self.lock();
        let now = Instant::now();
        let mut names: Vec<String> = inner.levels.keys().cloned().collect();
        names.sort();
        let mut wants = Vec::with_capacity(names.len());
        let mut total = 0.0;
        for name in &names {
            let l = inner.levels.get_mut(name).expect("listed");
            l.sync_time(now);
            let (avg, deviation, max) = l.demand.take(now);
            let envelope = avg + deviation;
            l.smoothed =
                envelope.max(DEMAND_SMOOTHING * l.smoothed + (1.0 - DEMAND_SMOOTHING) * envelope);
            let nominal = l.nominal as f64;
            let (min_limit, max_limit) = l.bounds();
            let high = max.round();
            let lower = if l.exempt {
                min_limit.max(high)
            } else {
                min_limit.max(nominal.min(high))
            };
            let target = lower.max(l.smoothed);
            l.adjusted = Adjusted {
                high,
                average: avg,
                deviation,
                target,
            };
            wants.push(Wants {
                lower,
                upper: max_limit.max(lower),
                target,
            });
            total += nominal;
        }
        let Some((allocs, fair_frac)) = allocate(total, &wants) else {
            tracing::warn!(
                ?wants,
                total,
                "APF: no allocation of the seats fits the levels' bounds"
            );
            return;
        };
        inner.fair_frac = fair_frac;
        for (name, alloc) in names.iter().zip(allocs) {
            let l = inner.levels.get_mut(name).expect("listed");
            if !l.exempt {
                l.limit = alloc.round() as u64;
            }
        }
        // more seats may let waiting requests run
        for name in &names {
            inner.dispatch(name);
        }
    }

    /// Whether API Priority and Fairness applies (else the max-in-flight filter).
    pub fn enabled(&self) -> bool {
        self.limits.priority_and_fairness
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
        let per_level: [LevelGauge; 11] = [
            (
                "apiserver_flowcontrol_nominal_limit_seats",
                "[BETA] Nominal number of execution seats configured for each priority level",
                |l| l.nominal as f64,
            ),
            (
                "apiserver_flowcontrol_current_limit_seats",
                "[ALPHA] current derived number of execution seats available to each priority level",
                |l| l.limit as f64,
            ),
            (
                "apiserver_flowcontrol_lower_limit_seats",
                "[ALPHA] Configured lower bound on number of execution seats available to each priority level",
                |l| l.bounds().0,
            ),
            (
                "apiserver_flowcontrol_upper_limit_seats",
                "[ALPHA] Configured upper bound on number of execution seats available to each priority level",
                |l| l.bounds().1,
            ),
            (
                "apiserver_flowcontrol_demand_seats_high_watermark",
                "[ALPHA] High watermark, over last adjustment period, of demand_seats",
                |l| l.adjusted.high,
            ),
            (
                "apiserver_flowcontrol_demand_seats_average",
                "[ALPHA] Time-weighted average, over last adjustment period, of demand_seats",
                |l| l.adjusted.average,
            ),
            (
                "apiserver_flowcontrol_demand_seats_stdev",
                "[ALPHA] Time-weighted standard deviation, over last adjustment period, of demand_seats",
                |l| l.adjusted.deviation,
            ),
            (
                "apiserver_flowcontrol_demand_seats_smoothed",
                "[ALPHA] Smoothed seat demands",
                |l| l.smoothed,
            ),
            (
                "apiserver_flowcontrol_target_seats",
                "[ALPHA] Seat allocation targets",
                |l| l.adjusted.target,
            ),
            (
                "apiserver_flowcontrol_current_r",
                "[ALPHA] R(time of last change)",
                |l| l.current_r as f64 / SEAT_SECOND as f64,
            ),
            (
                "apiserver_flowcontrol_current_inqueue_seats",
                "[ALPHA] Number of seats currently pending in queues of the API Priority and Fairness subsystem",
                |l| l.queues.iter().map(|q| q.sums().1).sum::<u64>() as f64,
            ),
        ];
        for (name, help, value) in per_level {
            head(&mut out, name, "gauge", help);
            for (pl, l) in &levels {
                let _ = writeln!(out, "{name}{{priority_level=\"{pl}\"}} {}", value(l));
            }
        }
        let name = "apiserver_flowcontrol_seat_fair_frac";
        head(
            &mut out,
            name,
            "gauge",
            "[ALPHA] Fair fraction of server's concurrency to allocate to each priority level that can use it",
        );
        let _ = writeln!(out, "{name} {}", inner.fair_frac);
        let name = "apiserver_flowcontrol_request_wait_duration_seconds";
        head(
            &mut out,
            name,
            "histogram",
            "[BETA] Length of time a request spent waiting in its queue",
        );
        for ((fs, pl, executed), h) in &inner.waits {
            h.write(
                &mut out,
                name,
                &format!("execute=\"{executed}\",{}", fs_pl(fs, pl)),
            );
        }
        let name = "apiserver_flowcontrol_request_execution_seconds";
        head(
            &mut out,
            name,
            "histogram",
            "[ALPHA] Duration of initial stage (for a WATCH) or any (for a non-WATCH) stage of request execution in the API Priority and Fairness subsystem",
        );
        for ((fs, pl, kind), h) in &inner.executions {
            h.write(
                &mut out,
                name,
                &format!("{},type=\"{kind}\"", fs_pl(fs, pl)),
            );
        }
        for (name, help, map) in [
            (
                "apiserver_flowcontrol_watch_count_samples",
                "[ALPHA] count of watchers for mutating requests in API Priority and Fairness",
                &inner.watch_counts,
            ),
            (
                "apiserver_flowcontrol_work_estimated_seats",
                "[ALPHA] Number of estimated seats (maximum of initial and final seats) associated with requests in API Priority and Fairness",
                &inner.estimated_seats,
            ),
        ] {
            head(&mut out, name, "histogram", help);
            for ((fs, pl), h) in map {
                h.write(&mut out, name, &fs_pl(fs, pl));
            }
        }
        out
    }
}

/// A per-level gauge: its name, help and value.
type LevelGauge = (&'static str, &'static str, fn(&Level) -> f64);

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

/// Give back `h`'s seats and hand them on.
fn release(inner: &mut Inner, h: &Held) {
    let seats = h.work.max_seats();
    let key = (h.schema.clone(), h.level.clone());
    *inner.executing_seats.entry(key).or_default() -= seats as i64;
    if let Some(l) = inner.levels.get_mut(&h.level) {
        l.sync_time(Instant::now());
        l.seats_in_use = l.seats_in_use.saturating_sub(seats);
        if let Some(q) = h.queue.and_then(|i| l.queues.get_mut(i)) {
            q.seats_in_use = q.seats_in_use.saturating_sub(seats);
        }
        l.trim_queues();
    }
    inner.dispatch(&h.level);
}

/// An open watch, counted for the writes to its resource until dropped.
struct WatchGuard {
    apf: Arc<Apf>,
    key: (String, String, String),
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let mut inner = self.apf.lock();
        if let Some(n) = inner.watches.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                inner.watches.remove(&self.key);
            }
        }
    }
}

/// `resp` with `guard` kept until its body has been sent (or dropped).
fn guarded(resp: Response, guard: WatchGuard) -> Response {
    let (parts, body) = resp.into_parts();
    let stream = futures::StreamExt::map(body.into_data_stream(), move |chunk| {
        let _counted = &guard;
        chunk
    });
    Response::from_parts(parts, axum::body::Body::from_stream(stream))
}

/// Go's `time.RFC3339Nano` in UTC (trailing zeros of the fraction dropped); Go's zero time
/// for none.
fn rfc3339_nano(t: Option<SystemTime>) -> String {
    let Some(ts) = t.and_then(|t| jiff::Timestamp::try_from(t).ok()) else {
        return "0001-01-01T00:00:00Z".into();
    };
    let nanos = u64::try_from(ts.subsec_nanosecond()).unwrap_or(0);
    format!(
        "{}{}Z",
        ts.strftime("%Y-%m-%dT%H:%M:%S"),
        crate::protobuf::fraction(nanos, 9)
    )
}

/// The rows as upstream's debug dumps print them: cells joined by `,` and aligned as Go's
/// `tabwriter` (minimum width 8, padding 1) aligns tab-terminated cells; a row's last cell
/// is not padded.
fn tab_rows(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![8usize; columns];
    for r in rows {
        for (i, c) in r.iter().enumerate().take(r.len().saturating_sub(1)) {
            // the cell's text is the column and its comma, then the padding
            widths[i] = widths[i].max(c.chars().count() + 2);
        }
    }
    let mut out = String::new();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                out.push_str(c);
            } else {
                let cell = format!("{c},");
                let pad = widths[i] - cell.chars().count();
                out.push_str(&cell);
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    }
    out
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
pub async fn filter(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    // the deadline filter (`crate::timeout`), further out, has parsed it
    let info = match req.extensions_mut().remove::<RequestInfo>() {
        Some(info) => info,
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
    // upstream's getRequestWaitContext: a quarter of the request's deadline, at most a
    // minute; 15 s for one without (a watch)
    let wait = req
        .extensions()
        .get::<crate::timeout::Deadline>()
        .map_or(QUEUE_WAIT, |d| {
            d.0.saturating_duration_since(Instant::now()) / 4
        })
        .min(MAX_QUEUE_WAIT);
    let info = Arc::new(info);
    let (admission, uids) = apf.admit(&info, &user, list_seats(&state, &info));
    let seat = match admission {
        Admission::Run(seat) => Some(seat),
        Admission::Wait(place) => place.wait(wait).await,
        Admission::Reject => None,
    };
    let Some(seat) = seat else {
        crate::router::discard_body(req.into_body()).await;
        return with_uids(too_many(), &uids);
    };
    // a watch counts for the writes to its resource (their final seats) while it is open
    let watch = (info.verb == "watch").then(|| apf.watching(&info));
    let resp = next.run(req).await;
    drop(seat);
    let resp = match watch {
        Some(guard) => guarded(resp, guard),
        None => resp,
    };
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
        let info = Arc::new(RequestInfo::parse(&Method::GET, "/api/v1/configmaps", None));
        let admit = |seats| match apf.admit(&info, &u, seats) {
            (Admission::Run(seat), uids) => {
                assert_eq!(uids, ("s-1".to_string(), "l-1".to_string()));
                Ok(seat)
            }
            (Admission::Wait(place), _) => Err(Box::new(place)),
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
        let big = big.seat();
        assert!(small.grant.try_recv().is_err());
        assert_eq!(apf.lock().levels["q"].seats_in_use, 3);
        drop(big);
        assert!(small.grant.try_recv().is_ok());
        let _small = small.seat();
        assert_eq!(apf.lock().levels["q"].seats_in_use, 1);
        // a request asking more seats than its level has asks for all of them
        assert!(admit(7).is_err(), "clamped to three seats, one in use");
    }

    /// A level of `seats` seats and `queues` queues of hand size 1, its flows by user, and
    /// a schema sending everyone's requests to it.
    fn fair_level(seats: u32, queues: usize) -> Arc<Apf> {
        let apf = Arc::new(Apf::new(Limits {
            priority_and_fairness: true,
            max_requests_inflight: seats,
            max_mutating_requests_inflight: 0,
        }));
        let level = json!({"metadata": {"name": "q"}, "spec": {"type": "Limited",
            "limited": {"nominalConcurrencyShares": 100000, "limitResponse": {"type": "Queue",
                "queuing": {"queues": queues, "handSize": 1, "queueLengthLimit": 50}}}}});
        let schema = json!({"metadata": {"name": "s"}, "spec": {
            "priorityLevelConfiguration": {"name": "q"}, "matchingPrecedence": 10,
            "distinguisherMethod": {"type": "ByUser"},
            "rules": [{"subjects": [{"kind": "Group", "group": {"name": "*"}}],
                "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                    "namespaces": ["*"], "clusterScope": true}]}]}});
        apf.configure(&[schema], &[level]);
        apf
    }

    /// A user whose flow goes to queue `queue` of `queues`.
    fn user_in_queue(queue: usize, queues: usize) -> UserInfo {
        let name = (0..)
            .map(|i| format!("user-{i}"))
            .find(|n| deal(flow_hash("s", n), queues, 1) == [queue])
            .expect("some user");
        user(&name, &["system:authenticated"])
    }

    #[test]
    fn fair_queuing_serves_the_earliest_virtual_finish_not_the_next_queue() {
        let apf = fair_level(1, 3);
        let (a, b, c) = (
            user_in_queue(1, 3),
            user_in_queue(0, 3),
            user_in_queue(2, 3),
        );
        let info = Arc::new(RequestInfo::parse(&Method::GET, "/api/v1/configmaps", None));
        let running = match apf.admit(&info, &a, 1).0 {
            Admission::Run(seat) => seat,
            _ => panic!("the seat is free"),
        };
        let wait = |u: &UserInfo| match apf.admit(&info, u, 1).0 {
            Admission::Wait(place) => place,
            _ => panic!("the seat is taken"),
        };
        std::thread::sleep(Duration::from_millis(50));
        let mut from_b = wait(&b);
        std::thread::sleep(Duration::from_millis(50));
        let mut from_c = wait(&c);
        drop(running);
        // round-robin would take queue 2 (C) after queue 1 (A); fair queuing takes the
        // request that finishes first in virtual time: B's, which came first to an idle
        // queue
        assert!(from_b.grant.try_recv().is_ok(), "B's request runs first");
        assert!(from_c.grant.try_recv().is_err());
        drop(from_b.seat());
        assert!(from_c.grant.try_recv().is_ok());
        drop(from_c.seat());
    }

    #[test]
    fn a_queue_is_charged_its_requests_real_duration() {
        let apf = fair_level(1, 1);
        let u = user("u", &["system:authenticated"]);
        let info = Arc::new(RequestInfo::parse(&Method::GET, "/api/v1/configmaps", None));
        let Admission::Run(seat) = apf.admit(&info, &u, 1).0 else {
            panic!("the seat is free")
        };
        // dispatched: charged the estimate, 3 ms of one seat
        assert_eq!(apf.lock().levels["q"].queues[0].next_dispatch_r, 300_000);
        std::thread::sleep(Duration::from_millis(200));
        drop(seat);
        let charged = apf.lock().levels["q"].queues[0].next_dispatch_r;
        assert!(
            (20_000_000..40_000_000).contains(&charged),
            "about 0.2 seat-seconds: {}",
            seat_seconds_text(charged)
        );
        let dump = apf.dump("dump_queues", false).expect("a dump");
        assert!(dump.contains(&seat_seconds_text(charged)), "{dump}");
    }

    #[test]
    fn writes_take_a_final_seat_per_ten_watchers() {
        let w = WorkEstimate::new(1, 9, 10);
        assert_eq!(
            (w.initial, w.final_seats, w.additional),
            (1, 0, Duration::ZERO)
        );
        let w = WorkEstimate::new(1, 25, 10);
        assert_eq!(
            (w.initial, w.final_seats, w.additional),
            (1, 3, Duration::from_millis(5))
        );
        // capped at the level's maximum: fewer seats, held longer, the same work
        let w = WorkEstimate::new(1, 200, 8);
        assert_eq!(
            (w.final_seats, w.additional),
            (8, Duration::from_micros(12_500))
        );
        assert_eq!(w.max_seats(), 8);
        assert_eq!(WorkEstimate::new(30, 0, 8).initial, 8);
    }

    #[test]
    fn work_estimates_and_execution_times_are_observed_as_upstream() {
        let apf = Arc::new(Apf::new(Limits {
            priority_and_fairness: true,
            max_requests_inflight: 20,
            max_mutating_requests_inflight: 0,
        }));
        let levels = [
            json!({"metadata": {"name": "exempt"}, "spec": {"type": "Exempt"}}),
            json!({"metadata": {"name": "q"}, "spec": {"type": "Limited", "limited": {
                "nominalConcurrencyShares": 1, "limitResponse": {"type": "Reject"}}}}),
        ];
        let schema = |name: &str, level: &str, precedence: u32, group: &str| {
            json!({"metadata": {"name": name}, "spec": {
                "priorityLevelConfiguration": {"name": level}, "matchingPrecedence": precedence,
                "rules": [{"subjects": [{"kind": "Group", "group": {"name": group}}],
                    "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"],
                        "namespaces": ["*"], "clusterScope": true}]}]}})
        };
        apf.configure(
            &[
                schema("exempt", "exempt", 1, "system:masters"),
                schema("s", "q", 10, "*"),
            ],
            &levels,
        );
        let (admin, jane) = (
            user("admin", &["system:masters"]),
            user("jane", &["system:authenticated"]),
        );
        let parse = |m: Method, path: &str, q| Arc::new(RequestInfo::parse(&m, path, q));
        let run = |info: &Arc<RequestInfo>, u: &UserInfo, seats| match apf.admit(info, u, seats).0 {
            Admission::Run(seat) => seat,
            _ => panic!("a seat is free"),
        };
        let cms = "/api/v1/namespaces/default/configmaps";
        let watch = parse(Method::GET, cms, Some("watch=1"));
        let watches: Vec<WatchGuard> = (0..12).map(|_| apf.watching(&watch)).collect();
        // a write 12 watches see: 2 seats, 12 watches sampled
        drop(run(&parse(Method::POST, cms, None), &jane, 1));
        // a list of 3 seats and a token's create (no events: no watch sample), 1 seat
        drop(run(&parse(Method::GET, cms, None), &jane, 3));
        let token = "/api/v1/namespaces/default/serviceaccounts/default/token";
        drop(run(&parse(Method::POST, token, None), &jane, 1));
        // a watch executes (its initial stage) for 20 ms
        let seat = run(&watch, &jane, 1);
        std::thread::sleep(Duration::from_millis(20));
        drop(seat);
        // an exempt request: its execution only (upstream estimates no exempt request)
        drop(run(&parse(Method::GET, cms, None), &admin, 1));
        drop(watches);

        let inner = apf.lock();
        let key = ("s".to_string(), "q".to_string());
        let seats = &inner.estimated_seats[&key];
        assert_eq!((seats.count, seats.sum), (4, 7.0));
        assert_eq!(seats.buckets, [2, 3, 4, 4], "at most 1, 2, 4, 10 seats");
        let watched = &inner.watch_counts[&key];
        assert_eq!((watched.count, watched.sum), (1, 12.0));
        assert_eq!(watched.buckets, [0, 0, 0, 1, 1, 1]);
        let ran = |fs: &str, pl: &str, kind| &inner.executions[&(fs.into(), pl.into(), kind)];
        assert_eq!(ran("s", "q", "regular").count, 3);
        let watched = ran("s", "q", "watch");
        assert!(watched.count == 1 && watched.sum >= 0.02, "{watched:?}");
        // above the bounds 0, 5 ms and 20 ms
        assert_eq!(watched.buckets[..3], [0, 0, 0], "{watched:?}");
        assert_eq!(ran("exempt", "exempt", "regular").count, 1);
        let exempt = ("exempt".to_string(), "exempt".to_string());
        assert!(!inner.estimated_seats.contains_key(&exempt));
        assert!(!inner.watch_counts.contains_key(&exempt));
        drop(inner);

        let text = apf.render_metrics();
        for want in [
            "# TYPE apiserver_flowcontrol_work_estimated_seats histogram\n",
            "# HELP apiserver_flowcontrol_watch_count_samples [ALPHA] count of watchers",
            "# TYPE apiserver_flowcontrol_request_execution_seconds histogram\n",
            r#"apiserver_flowcontrol_work_estimated_seats_bucket{flow_schema="s",priority_level="q",le="4"} 4"#,
            r#"apiserver_flowcontrol_work_estimated_seats_sum{flow_schema="s",priority_level="q"} 7"#,
            r#"apiserver_flowcontrol_watch_count_samples_bucket{flow_schema="s",priority_level="q",le="100"} 1"#,
            r#"apiserver_flowcontrol_watch_count_samples_bucket{flow_schema="s",priority_level="q",le="+Inf"} 1"#,
            r#"apiserver_flowcontrol_request_execution_seconds_count{flow_schema="s",priority_level="q",type="watch"} 1"#,
            r#"apiserver_flowcontrol_request_execution_seconds_bucket{flow_schema="s",priority_level="q",type="regular",le="30"} 3"#,
            r#"apiserver_flowcontrol_request_wait_duration_seconds_bucket{execute="true",flow_schema="s",priority_level="q",le="15"} 4"#,
        ] {
            assert!(text.contains(want), "{want} in\n{text}");
        }
    }

    #[test]
    fn seats_are_shared_in_proportion_to_what_levels_want_within_their_bounds() {
        let w = |lower, upper, target| Wants {
            lower,
            upper,
            target,
        };
        // no bound matters: in proportion to the targets
        let (a, fair) = allocate(30.0, &[w(0.0, 100.0, 1.0), w(0.0, 100.0, 2.0)]).expect("fits");
        assert!((fair - 10.0).abs() < 1e-6, "{fair}");
        assert!(
            (a[0] - 10.0).abs() < 1e-6 && (a[1] - 20.0).abs() < 1e-6,
            "{a:?}"
        );
        // the first may not borrow past 12; the idle third keeps its lower bound
        let (a, _) = allocate(
            30.0,
            &[w(5.0, 12.0, 10.0), w(5.0, 100.0, 10.0), w(2.0, 100.0, 0.0)],
        )
        .expect("fits");
        assert!((a[0] - 12.0).abs() < 1e-6, "{a:?}");
        assert!((a[1] - 16.0).abs() < 1e-6, "{a:?}");
        assert!((a[2] - 2.0).abs() < 1e-6, "{a:?}");
        // bounds that cannot add up
        assert_eq!(allocate(3.0, &[w(2.0, 5.0, 2.0), w(2.0, 5.0, 2.0)]), None);
        assert_eq!(allocate(30.0, &[w(2.0, 5.0, 2.0), w(2.0, 5.0, 2.0)]), None);
    }

    #[test]
    fn demand_is_averaged_over_the_period() {
        let start = Instant::now();
        let mut d = Demand::new(start);
        d.add(2.0, Duration::from_secs(1));
        d.add(0.0, Duration::from_secs(1));
        let (avg, deviation, max) = d.take(start + Duration::from_secs(2));
        assert!(
            (avg - 1.0).abs() < 1e-9 && (deviation - 1.0).abs() < 1e-9,
            "{avg} {deviation}"
        );
        assert_eq!(max, 2.0);
        assert_eq!(d.take(start + Duration::from_secs(3)), (0.0, 0.0, 0.0));
    }

    #[test]
    fn dumps_align_their_cells_as_gos_tabwriter() {
        let rows = vec![
            vec![
                "PriorityLevelName".to_string(),
                "IsIdle".into(),
                "Last".into(),
            ],
            vec!["catch-all".to_string(), "true".into(), "0".into()],
        ];
        assert_eq!(
            tab_rows(&rows),
            "PriorityLevelName, IsIdle, Last\ncatch-all,         true,   0\n"
        );
        assert_eq!(seat_seconds_text(300_000), "0.00300000ss");
        assert_eq!(seat_seconds_text(1_234_567_891), "12.34567891ss");
        assert_eq!(rfc3339_nano(None), "0001-01-01T00:00:00Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_500_000_000);
        assert_eq!(rfc3339_nano(Some(t)), "1970-01-01T00:00:01.5Z");
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
