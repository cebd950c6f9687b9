//! HorizontalPodAutoscaler (upstream's `horizontalpodautoscaling` controller), for
//! `autoscaling/v2` objects: every `--horizontal-pod-autoscaler-sync-period` (default 15 s)
//! each HPA is synced as upstream's `reconcileAutoscaler` does:
//!
//! 1. The target's scale subresource (`GET <target>/scale`, any kind discovery says has one:
//!    Deployment, ReplicaSet, StatefulSet, ReplicationController, ...) gives the current
//!    replicas and the pod selector (`status.selector`).
//! 2. A target scaled to 0 is left alone (`ScalingActive=False`, `ScalingDisabled`); outside
//!    `minReplicas`/`maxReplicas` it is brought back inside; otherwise each metric proposes a
//!    count and the largest wins. `Resource` and `ContainerResource` metrics read
//!    `metrics.k8s.io` PodMetrics of the selected pods (the apiserver serves them, see
//!    `apiserver/src/metrics_api`) and the pods' requests: [`replicas::resource_replicas`]
//!    (ratio with the 0.1 tolerance, missing metrics assumed 100%/0% against the direction
//!    of the change, unready pods ignored for a CPU scale-up). `Pods`, `Object` and
//!    `External` metrics need a custom metrics API kaze does not serve: they count as
//!    invalid metrics, with upstream's conditions and events.
//! 3. The proposal is stabilized and rate-limited by `spec.behavior` (upstream's defaults
//!    for what is unset: scale-up no window, max(100%, 4 pods) per 15 s; scale-down a
//!    `--horizontal-pod-autoscaler-downscale-stabilization` window (300 s), 100% per 15 s),
//!    or without `behavior` by the downscale window and a max(2×, 4) scale-up cap:
//!    [`replicas::normalize_with_behavior`].
//! 4. A changed count is written to the scale subresource, with a `SuccessfulRescale` event
//!    (`New size: 3; reason: cpu resource utilization (percentage of request) above
//!    target`), and the status (`currentReplicas`, `desiredReplicas`, `currentMetrics`,
//!    `lastScaleTime`, conditions `AbleToScale`, `ScalingActive`, `ScalingLimited` with
//!    upstream's reasons) is written when it changed.
//!
//! Recommendations and recent scale events live in memory, as upstream's do: a restarted
//! controller-manager starts its stabilization windows afresh.

pub mod replicas;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::autoscaling::v1::Scale;
use k8s_openapi::api::autoscaling::v2::{
    HPAScalingRules, HorizontalPodAutoscaler, MetricSpec, MetricTarget,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use serde_json::{json, Value};
use tokio::sync::Mutex;

use replicas::{
    Bounds, Cond, History, PodInfo, PodMetric, Policy, PolicyKind, Rules, Select, Target,
};

const COMPONENT: &str = "horizontal-pod-autoscaler";

/// The controller's tunables (upstream's flags of the same names).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// `--horizontal-pod-autoscaler-sync-period`
    pub sync_period: Duration,
    /// `--horizontal-pod-autoscaler-downscale-stabilization`
    pub downscale_stabilization: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            sync_period: Duration::from_secs(15),
            downscale_stabilization: Duration::from_secs(300),
        }
    }
}

/// What the controller keeps between syncs.
struct State {
    /// HorizontalPodAutoscalers and pods come from the shared caches; the metrics API is
    /// read live, as upstream does (it has no watch).
    hpas: crate::informers::Informer<HorizontalPodAutoscaler>,
    pods: crate::informers::Informer<Pod>,
    client: Client,
    settings: Settings,
    /// Per HPA (namespace/name): recommendations and scale events.
    history: Mutex<HashMap<String, History>>,
    /// Scale targets' resources by (apiVersion, kind).
    resources: Mutex<HashMap<(String, String), ApiResource>>,
    events: crate::events::Recorder,
}

pub async fn run(ctx: Arc<crate::Ctx>, settings: Settings, shutdown: component::CancellationToken) {
    let client = ctx.client.clone();
    let (hpas, pods) = (ctx.informers.get::<HorizontalPodAutoscaler>(), ctx.pods());
    if !crate::informers::wait_synced(&shutdown, async {
        hpas.synced().await;
        pods.synced().await;
    })
    .await
    {
        return;
    }
    let state = Arc::new(State {
        hpas,
        pods,
        events: crate::events::Recorder::new(client.clone(), COMPONENT),
        client,
        settings,
        history: Mutex::default(),
        resources: Mutex::default(),
    });
    let mut tick = tokio::time::interval(settings.sync_period.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = sync_all(&state) => {}
        }
    }
}

async fn sync_all(state: &State) {
    let hpas: Vec<HorizontalPodAutoscaler> = state
        .hpas
        .all()
        .iter()
        .map(|h| h.as_ref().clone())
        .collect();
    let keys: Vec<String> = hpas.iter().map(key).collect();
    state.history.lock().await.retain(|k, _| keys.contains(k));
    // one at a time, as upstream's workers take them from the queue; each is short
    for hpa in hpas {
        let span = tracing::info_span!("reconcile", object = %key(&hpa));
        let _enter = span.enter();
        if let Err(e) = sync(state, &hpa).await {
            tracing::warn!(error = %e, "syncing HorizontalPodAutoscaler");
        }
    }
}

fn key(hpa: &HorizontalPodAutoscaler) -> String {
    format!("{}/{}", hpa.namespace().unwrap_or_default(), hpa.name_any())
}

fn now_secs() -> f64 {
    Timestamp::now().as_millisecond() as f64 / 1000.0
}

/// The conditions and status fields a sync produces.
#[derive(Debug, Default)]
struct Outcome {
    conditions: Vec<Cond>,
    metrics: Vec<Value>,
}

impl Outcome {
    fn set(&mut self, ty: &'static str, status: bool, reason: &'static str, message: String) {
        self.conditions.retain(|c| c.0 != ty);
        self.conditions.push((ty, status, reason, message));
    }
}

async fn sync(state: &State, hpa: &HorizontalPodAutoscaler) -> Result<(), String> {
    let ns = hpa.namespace().unwrap_or_default();
    let spec = hpa.spec.clone();
    let target = &spec.scale_target_ref;
    let mut out = Outcome::default();
    let status_before = hpa.status.clone().unwrap_or_default();

    let scale = match get_scale(state, &ns, &target.api_version, &target.kind, &target.name).await {
        Ok(s) => s,
        Err(e) => {
            let message =
                format!("the HPA controller was unable to get the target's current scale: {e}");
            state.events.warn(hpa, "FailedGetScale", &e).await;
            out.set("AbleToScale", false, "FailedGetScale", message);
            write_unchanged(
                state,
                hpa,
                &out,
                status_before.current_replicas.unwrap_or(0),
            )
            .await;
            return Err(e);
        }
    };
    let (api, scale) = scale;
    out.set(
        "AbleToScale",
        true,
        "SucceededGetScale",
        "the HPA controller was able to get the target's current scale".into(),
    );
    let current = scale.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
    let min = spec.min_replicas.unwrap_or(1);
    let max = spec.max_replicas;
    let now = now_secs();

    let mut rescale_reason = String::new();
    let desired;
    if current == 0 && min != 0 {
        desired = 0;
        out.set(
            "ScalingActive",
            false,
            "ScalingDisabled",
            "scaling is disabled since the replica count of the target is zero".into(),
        );
    } else if current > max {
        rescale_reason = "Current number of replicas above Spec.MaxReplicas".into();
        desired = max;
    } else if current < min {
        rescale_reason = "Current number of replicas below Spec.MinReplicas".into();
        desired = min;
    } else {
        let selector = scale
            .status
            .as_ref()
            .and_then(|s| s.selector.clone())
            .unwrap_or_default();
        if selector.is_empty() {
            let e = "the HPA target's scale is missing a selector";
            state.events.warn(hpa, "SelectorRequired", e).await;
            out.set("ScalingActive", false, "InvalidSelector", e.into());
            write_unchanged(state, hpa, &out, current).await;
            return Err(e.into());
        }
        let metric_specs = spec
            .metrics
            .clone()
            .unwrap_or_else(|| vec![default_cpu_metric()]);
        let (proposal, metric_name) = match compute_metrics(
            state,
            hpa,
            &ns,
            &selector,
            current,
            &metric_specs,
            now,
            &mut out,
        )
        .await
        {
            Ok(p) => p,
            Err(e) => {
                write_unchanged(state, hpa, &out, current).await;
                state
                    .events
                    .warn(hpa, "FailedComputeMetricsReplicas", &e)
                    .await;
                return Err(format!(
                    "failed to compute desired number of replicas based on listed metrics: {e}"
                ));
            }
        };
        if proposal > current {
            rescale_reason = format!("{metric_name} above target");
        } else if proposal < current {
            rescale_reason = "All metrics below target".into();
        }
        let bounds = Bounds { current, min, max };
        let mut histories = state.history.lock().await;
        let history = histories.entry(key(hpa)).or_default();
        let window = state.settings.downscale_stabilization.as_secs() as i32;
        let (n, conds) = match &spec.behavior {
            Some(b) => {
                let (up, down) = behavior_rules(b.scale_up.as_ref(), b.scale_down.as_ref(), window);
                replicas::normalize_with_behavior(history, &up, &down, &bounds, proposal, now)
            }
            None => replicas::normalize_without_behavior(history, window, &bounds, proposal, now),
        };
        for c in conds {
            out.set(c.0, c.1, c.2, c.3);
        }
        desired = n;
    }

    let rescale = desired != current && !(current == 0 && min != 0);
    if rescale {
        let mut next = scale.clone();
        next.spec.get_or_insert_with(Default::default).replicas = Some(desired);
        if let Err(e) = api
            .replace_scale(&target.name, &PostParams::default(), &next)
            .await
        {
            let e = e.to_string();
            state
                .events
                .warn(
                    hpa,
                    "FailedRescale",
                    &format!("New size: {desired}; reason: {rescale_reason}; error: {e}"),
                )
                .await;
            out.set(
                "AbleToScale",
                false,
                "FailedUpdateScale",
                format!("the HPA controller was unable to update the target scale: {e}"),
            );
            write_unchanged(state, hpa, &out, current).await;
            return Err(format!("failed to rescale: {e}"));
        }
        out.set(
            "AbleToScale",
            true,
            "SucceededRescale",
            format!("the HPA controller was able to update the target scale to {desired}"),
        );
        state
            .events
            .normal(
                hpa,
                "SuccessfulRescale",
                &format!("New size: {desired}; reason: {rescale_reason}"),
            )
            .await;
        if let Some(b) = &spec.behavior {
            let window = state.settings.downscale_stabilization.as_secs() as i32;
            let (up, down) = behavior_rules(b.scale_up.as_ref(), b.scale_down.as_ref(), window);
            let mut histories = state.history.lock().await;
            let history = histories.entry(key(hpa)).or_default();
            replicas::record_scale(history, &up, &down, current, desired, now);
        }
        tracing::info!(from = current, to = desired, reason = %rescale_reason, "rescaled");
    }
    let desired = if rescale { desired } else { current };
    write_status(state, hpa, &out, current, desired, rescale).await;
    Ok(())
}

/// Upstream's default metric for an HPA without any: 80% CPU.
fn default_cpu_metric() -> MetricSpec {
    serde_json::from_value(json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}))
        .unwrap_or_default()
}

fn rules(r: Option<&HPAScalingRules>, default: Rules) -> Rules {
    let Some(r) = r else { return default };
    Rules {
        stabilization_seconds: r
            .stabilization_window_seconds
            .unwrap_or(default.stabilization_seconds),
        select: match r.select_policy.as_deref() {
            Some("Min") => Select::Min,
            Some("Disabled") => Select::Disabled,
            Some(_) | None => Select::Max,
        },
        policies: match &r.policies {
            Some(p) if !p.is_empty() => p
                .iter()
                .map(|p| Policy {
                    kind: if p.type_ == "Pods" {
                        PolicyKind::Pods
                    } else {
                        PolicyKind::Percent
                    },
                    value: p.value,
                    period_seconds: p.period_seconds,
                })
                .collect(),
            _ => default.policies,
        },
    }
}

/// `spec.behavior` with upstream's defaults (`GenerateHPAScaleUpRules`/`...DownRules`).
fn behavior_rules(
    up: Option<&HPAScalingRules>,
    down: Option<&HPAScalingRules>,
    window: i32,
) -> (Rules, Rules) {
    (
        rules(up, Rules::default_up()),
        rules(down, Rules::default_down(window)),
    )
}

/// Every metric's proposal; the largest wins (upstream's `computeReplicasForMetrics`).
#[allow(clippy::too_many_arguments)]
async fn compute_metrics(
    state: &State,
    hpa: &HorizontalPodAutoscaler,
    ns: &str,
    selector: &str,
    current: i32,
    specs: &[MetricSpec],
    now: f64,
    out: &mut Outcome,
) -> Result<(i32, String), String> {
    let mut best: Option<(i32, String)> = None;
    let mut invalid = 0;
    let mut first_error: Option<(String, &'static str)> = None;
    for spec in specs {
        match compute_metric(state, ns, selector, current, spec, now).await {
            Ok((proposal, name, status)) => {
                out.metrics.push(status);
                if best.as_ref().is_none_or(|(r, _)| proposal > *r) {
                    best = Some((proposal, name));
                }
            }
            Err((reason, e)) => {
                state.events.warn(hpa, reason, &e).await;
                // upstream keeps an empty status entry of the metric's type
                out.metrics.push(json!({"type": spec.type_}));
                invalid += 1;
                if first_error.is_none() {
                    first_error = Some((e, reason));
                }
            }
        }
    }
    if let Some((e, reason)) = &first_error {
        let replicas = best.as_ref().map_or(0, |b| b.0);
        if invalid >= specs.len() || replicas < current {
            out.set(
                "ScalingActive",
                false,
                reason,
                format!("the HPA was unable to compute the replica count: {e}"),
            );
            return Err(format!(
                "invalid metrics ({invalid} invalid out of {}), first error is: {e}",
                specs.len()
            ));
        }
    }
    let (replicas, name) = best.ok_or_else(|| "no metrics".to_string())?;
    out.set(
        "ScalingActive",
        true,
        "ValidMetricFound",
        format!("the HPA was able to successfully calculate a replica count from {name}"),
    );
    Ok((replicas, name))
}

/// One metric: (proposal, its name for messages, its `currentMetrics` entry), or the
/// condition reason and error.
async fn compute_metric(
    state: &State,
    ns: &str,
    selector: &str,
    current: i32,
    spec: &MetricSpec,
    now: f64,
) -> Result<(i32, String, Value), (&'static str, String)> {
    let (resource, container, target, reason) = match spec.type_.as_str() {
        "Resource" => match &spec.resource {
            Some(r) => (r.name.clone(), None, &r.target, "FailedGetResourceMetric"),
            None => return Err(("FailedGetResourceMetric", "invalid resource metric source: no resource set".into())),
        },
        "ContainerResource" => match &spec.container_resource {
            Some(r) => (r.name.clone(), Some(r.container.clone()), &r.target, "FailedGetContainerResourceMetric"),
            None => {
                return Err((
                    "FailedGetContainerResourceMetric",
                    "invalid container resource metric source: no container resource set".into(),
                ))
            }
        },
        "Pods" => return Err(("FailedGetPodsMetric", no_custom_metrics("pods"))),
        "Object" => return Err(("FailedGetObjectMetric", no_custom_metrics("object"))),
        "External" => {
            return Err((
                "FailedGetExternalMetric",
                "unable to get external metric: unable to fetch metrics from external metrics API: the server could not find the requested resource (external.metrics.k8s.io is not served)".into(),
            ))
        }
        other => return Err(("InvalidMetricSourceType", format!("unknown metric source type {other:?}"))),
    };
    let target_kind = metric_target(target).map_err(|e| (reason, e))?;
    let (kind_word, name) = match target_kind {
        Target::AverageValue(_) => ("usage", format!("{resource} resource")),
        Target::Utilization(_) => (
            "utilization",
            format!("{resource} resource utilization (percentage of request)"),
        ),
    };
    let name = match &container {
        Some(c) => match target_kind {
            Target::AverageValue(_) => format!("{resource} container resource"),
            Target::Utilization(_) => format!("{resource} container resource utilization (percentage of request) of container {c}"),
        },
        None => name,
    };
    let wrap = |e: String| (reason, format!("failed to get {resource} {kind_word}: {e}"));
    let metrics = pod_metrics(&state.client, ns, selector, &resource, container.as_deref())
        .await
        .map_err(|e| {
            wrap(format!(
                "unable to get metrics for resource {resource}: {e}"
            ))
        })?;
    let parsed = crate::util::parse_selector(selector).ok_or_else(|| {
        wrap(format!(
            "unable to get pods while calculating replica count: invalid selector {selector:?}"
        ))
    })?;
    let pods: Vec<std::sync::Arc<Pod>> = state
        .pods
        .by(crate::informers::Index::Namespace, ns)
        .into_iter()
        .filter(|p| {
            component::selectors::label_selector_matches(
                &parsed,
                p.metadata.labels.as_ref().unwrap_or(&Default::default()),
            )
        })
        .collect();
    let infos: Vec<PodInfo> = pods
        .iter()
        .map(|p| pod_info(p, &resource, container.as_deref()))
        .collect();
    let p = replicas::resource_replicas(current, target_kind, &resource, &infos, &metrics, now)
        .map_err(wrap)?;
    let mut current_status = json!({"averageValue": replicas::milli_quantity(p.average_milli)});
    if let Some(u) = p.utilization {
        current_status["averageUtilization"] = json!(u);
    }
    let status = match &container {
        Some(c) => {
            json!({"type": "ContainerResource", "containerResource": {"name": resource, "container": c, "current": current_status}})
        }
        None => {
            json!({"type": "Resource", "resource": {"name": resource, "current": current_status}})
        }
    };
    Ok((p.replicas, name, status))
}

fn no_custom_metrics(what: &str) -> String {
    format!("unable to get metric: unable to fetch metrics from custom metrics API: the server could not find the requested resource (custom.metrics.k8s.io is not served, needed by {what} metrics)")
}

fn metric_target(t: &MetricTarget) -> Result<Target, String> {
    if let Some(v) = &t.average_value {
        let q = component::quota::Quantity::parse(&v.0)
            .ok_or_else(|| format!("invalid averageValue {:?}", v.0))?;
        // upstream's MilliValue rounds up
        let milli = (q.nanos + 999_999).div_euclid(1_000_000);
        return Ok(Target::AverageValue(milli as i64));
    }
    match t.average_utilization {
        Some(u) => Ok(Target::Utilization(u)),
        None => Err("invalid resource metric source: neither an average utilization target nor an average value (usage) target was set".into()),
    }
}

fn milli_of(q: &str) -> Option<i64> {
    let q = component::quota::Quantity::parse(q)?;
    Some((q.nanos + 999_999).div_euclid(1_000_000) as i64)
}

/// What the calculation needs of a pod: phase, readiness, start and its requests of
/// `resource` (of `container` alone for ContainerResource metrics).
fn pod_info(pod: &Pod, resource: &str, container: Option<&str>) -> PodInfo {
    let status = pod.status.clone().unwrap_or_default();
    let ts = |t: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time| {
        t.0.as_millisecond() as f64 / 1000.0
    };
    let ready = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .map(|c| {
            (
                c.status == "True",
                c.last_transition_time.as_ref().map_or(0.0, ts),
            )
        });
    let mut request: Result<i64, String> = Ok(0);
    for c in pod.spec.iter().flat_map(|s| &s.containers) {
        if container.is_some_and(|want| want != c.name) {
            continue;
        }
        let r = c
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .and_then(|r| r.get(resource))
            .and_then(|q| milli_of(&q.0));
        request = match (request, r) {
            (Ok(sum), Some(r)) => Ok(sum + r),
            (Ok(_), None) => Err(c.name.clone()),
            (e, _) => e,
        };
    }
    PodInfo {
        name: pod.name_any(),
        phase: status.phase.unwrap_or_default(),
        deleting: pod.metadata.deletion_timestamp.is_some(),
        start: status.start_time.as_ref().map(ts),
        ready,
        request_milli: request,
    }
}

/// The pods' usage of `resource` from `metrics.k8s.io` (upstream's resource metrics
/// client): per pod the sum over its containers (or the one named), in milli-units; a pod
/// with a container lacking the resource is left out.
async fn pod_metrics(
    client: &Client,
    ns: &str,
    selector: &str,
    resource: &str,
    container: Option<&str>,
) -> Result<BTreeMap<String, PodMetric>, String> {
    let ar = ApiResource {
        group: "metrics.k8s.io".into(),
        version: "v1beta1".into(),
        api_version: "metrics.k8s.io/v1beta1".into(),
        kind: "PodMetrics".into(),
        plural: "pods".into(),
    };
    let list = Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar)
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| format!("unable to fetch metrics from resource metrics API: {e}"))?;
    if list.items.is_empty() {
        return Err("no metrics returned from resource metrics API".into());
    }
    let mut out = BTreeMap::new();
    for m in &list.items {
        let at = m.data["timestamp"]
            .as_str()
            .and_then(|t| t.parse::<Timestamp>().ok())
            .map_or(0.0, |t| t.as_millisecond() as f64 / 1000.0);
        let window = m.data["window"].as_str().map_or(0.0, parse_go_duration);
        let mut sum = 0i64;
        let mut found = false;
        let mut missing = false;
        for c in m.data["containers"].as_array().into_iter().flatten() {
            if container.is_some_and(|want| c["name"] != want) {
                continue;
            }
            match c["usage"][resource].as_str().and_then(milli_of) {
                Some(v) => {
                    sum += v;
                    found = true;
                }
                None => missing = true,
            }
        }
        if found && !missing {
            out.insert(
                m.name_any(),
                PodMetric {
                    value_milli: sum,
                    at,
                    window,
                },
            );
        }
    }
    Ok(out)
}

/// Seconds of a Go duration string (`15s`, `1m0.5s`, `800ms`).
fn parse_go_duration(s: &str) -> f64 {
    let mut total = 0.0;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        if matches!(c, 'm' | 'u' | 'µ' | 'n') && chars.peek() == Some(&'s') {
            unit.push(chars.next().unwrap_or('s'));
        }
        let n: f64 = num.parse().unwrap_or(0.0);
        num.clear();
        total += n * match unit.as_str() {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => 0.0,
        };
    }
    total
}

/// The target's scale, through the resource discovery names for its kind.
async fn get_scale(
    state: &State,
    ns: &str,
    api_version: &Option<String>,
    kind: &str,
    name: &str,
) -> Result<(Api<DynamicObject>, Scale), String> {
    let api_version = api_version.clone().unwrap_or_else(|| "v1".into());
    let cache_key = (api_version.clone(), kind.to_string());
    let cached = state.resources.lock().await.get(&cache_key).cloned();
    let ar = match cached {
        Some(ar) => ar,
        None => {
            let (group, version) = match api_version.split_once('/') {
                Some((g, v)) => (g.to_string(), v.to_string()),
                None => (String::new(), api_version.clone()),
            };
            let gvk = GroupVersionKind::gvk(&group, &version, kind);
            let (ar, _) = kube::discovery::pinned_kind(&state.client, &gvk)
                .await
                .map_err(|e| {
                    format!("unable to determine resource for scale target reference: {e}")
                })?;
            state.resources.lock().await.insert(cache_key, ar.clone());
            ar
        }
    };
    let api = Api::<DynamicObject>::namespaced_with(state.client.clone(), ns, &ar);
    let scale = api.get_scale(name).await.map_err(|e| match e {
        kube::Error::Api(s) => s.message.clone(),
        e => e.to_string(),
    })?;
    Ok((api, scale))
}

/// Write the status if it changed (upstream's `setStatus` + `updateStatusIfNeeded`);
/// conditions keep their transition time unless their status flips.
/// The status of a sync that stopped early: conditions as found, desired replicas as before.
async fn write_unchanged(
    state: &State,
    hpa: &HorizontalPodAutoscaler,
    out: &Outcome,
    current: i32,
) {
    let desired = hpa.status.as_ref().map_or(0, |s| s.desired_replicas);
    write_status(state, hpa, out, current, desired, false).await;
}

async fn write_status(
    state: &State,
    hpa: &HorizontalPodAutoscaler,
    out: &Outcome,
    current: i32,
    desired: i32,
    rescaled: bool,
) {
    let before =
        serde_json::to_value(hpa.status.clone().unwrap_or_default()).unwrap_or(Value::Null);
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now());
    let now_json = serde_json::to_value(&now).unwrap_or(Value::Null);
    let mut conditions: Vec<Value> = before["conditions"].as_array().cloned().unwrap_or_default();
    for (ty, status, reason, message) in &out.conditions {
        let status = if *status { "True" } else { "False" };
        match conditions.iter_mut().find(|c| c["type"] == *ty) {
            Some(c) => {
                if c["status"] != status {
                    c["lastTransitionTime"] = now_json.clone();
                }
                c["status"] = json!(status);
                c["reason"] = json!(reason);
                c["message"] = json!(message);
            }
            None => conditions.push(json!({"type": ty, "status": status, "reason": reason, "message": message, "lastTransitionTime": now_json})),
        }
    }
    let mut status = json!({
        "currentReplicas": current,
        "desiredReplicas": desired,
        "conditions": conditions,
    });
    if !out.metrics.is_empty() {
        status["currentMetrics"] = json!(out.metrics);
    }
    let last_scale = if rescaled {
        now_json.clone()
    } else {
        before["lastScaleTime"].clone()
    };
    if !last_scale.is_null() {
        status["lastScaleTime"] = last_scale;
    }
    if status == before {
        return;
    }
    let api = Api::<HorizontalPodAutoscaler>::namespaced(
        state.client.clone(),
        &hpa.namespace().unwrap_or_default(),
    );
    // the whole status replaces the old one: a merge patch with every field, lists whole;
    // fields this sync did not produce (currentMetrics after an error) are cleared
    let mut patch = json!({"status": status});
    if out.metrics.is_empty() {
        patch["status"]["currentMetrics"] = Value::Null;
    }
    if let Err(e) = api
        .patch_status(
            &hpa.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        tracing::warn!(error = %e, "writing HorizontalPodAutoscaler status");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("15s"), 15.0);
        assert_eq!(parse_go_duration("1m0.5s"), 60.5);
        assert_eq!(parse_go_duration("800ms"), 0.8);
    }

    #[test]
    fn behavior_defaults_fill_what_is_unset() {
        let down: HPAScalingRules =
            serde_json::from_value(json!({"stabilizationWindowSeconds": 0})).expect("rules");
        let (up, down) = behavior_rules(None, Some(&down), 300);
        assert_eq!(up, Rules::default_up());
        assert_eq!(down, Rules::default_down(0));
        let pods: HPAScalingRules = serde_json::from_value(
            json!({"selectPolicy": "Min", "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}]}),
        )
        .expect("rules");
        let (_, down) = behavior_rules(None, Some(&pods), 300);
        assert_eq!(down.stabilization_seconds, 300);
        assert_eq!(down.select, Select::Min);
        assert_eq!(
            down.policies,
            vec![Policy {
                kind: PolicyKind::Pods,
                value: 1,
                period_seconds: 60
            }]
        );
    }

    #[test]
    fn targets() {
        let t: MetricTarget =
            serde_json::from_value(json!({"type": "AverageValue", "averageValue": "100Mi"}))
                .expect("target");
        assert_eq!(
            metric_target(&t),
            Ok(Target::AverageValue(100 * 1024 * 1024 * 1000))
        );
        let t: MetricTarget =
            serde_json::from_value(json!({"type": "Utilization", "averageUtilization": 50}))
                .expect("target");
        assert_eq!(metric_target(&t), Ok(Target::Utilization(50)));
        let t: MetricTarget =
            serde_json::from_value(json!({"type": "Utilization"})).expect("target");
        assert!(metric_target(&t).is_err());
    }
}
