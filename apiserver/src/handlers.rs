//! HTTP glue for resource requests: turn method + target + query into a verb, call
//! [`crate::objects`], and encode the answer (object, list, Table, Status).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Value};

use crate::managedfields;
use crate::negotiate::{self, Accept, BodyType};
use crate::objects::{self, DeleteOpts, ListOpts, Part};
use crate::registry::{ResourceDef, Sub};
use crate::selector::{FieldSelector, Filter, LabelSelector};
use crate::state::AppState;
use crate::status::ApiError;
use crate::table::{self, Include};
use crate::watch::{self, WatchOpts};

/// What a resource URL names.
#[derive(Debug, Clone)]
pub struct Target {
    pub def: Arc<ResourceDef>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub sub: Option<Sub>,
}

pub type Query = HashMap<String, String>;

pub fn parse_query(raw: Option<&str>) -> Query {
    form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn flag(q: &Query, k: &str) -> bool {
    matches!(q.get(k).map(String::as_str), Some("true" | "1"))
}

fn dry_run(q: &Query) -> Result<bool, ApiError> {
    match q.get("dryRun").map(String::as_str) {
        None | Some("") => Ok(false),
        Some("All") => Ok(true),
        Some(other) => Err(ApiError::bad_request(format!(
            "unsupported dry run value {other:?}: only \"All\" is supported"
        ))),
    }
}

fn write_opts(q: &Query) -> Result<objects::WriteOpts, ApiError> {
    let strict = match q.get("fieldValidation").map(String::as_str) {
        None | Some("") | Some("Ignore") | Some("Warn") => false,
        Some("Strict") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "fieldValidation must be one of \"Ignore\", \"Warn\" or \"Strict\", got {other:?}"
            )))
        }
    };
    Ok(objects::WriteOpts {
        dry_run: dry_run(q)?,
        strict,
    })
}

fn filter(def: &ResourceDef, q: &Query) -> Result<Filter, ApiError> {
    Ok(Filter {
        labels: LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))
            .map_err(ApiError::bad_request)?,
        fields: FieldSelector::parse(
            q.get("fieldSelector").map_or("", String::as_str),
            def.selectable_fields,
        )
        .map_err(ApiError::bad_request)?,
    })
}

pub async fn handle(
    state: Arc<AppState>,
    method: Method,
    t: Target,
    q: Query,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let warn = matches!(
        q.get("fieldValidation").map(String::as_str),
        None | Some("" | "Warn")
    );
    let sub = t.sub.map(Sub::name);
    // boxed: the dispatch future is large, and debug builds copy it on the stack at every
    // layer that wraps it (the worker's 2 MiB stack overflowed)
    let handled = Box::pin(dispatch(state, method, t, q, headers, body));
    let handled = crate::webhooks::with_subresource(sub, handled);
    match crate::warning::field_validation(warn, handled).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn dispatch(
    state: Arc<AppState>,
    method: Method,
    t: Target,
    q: Query,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let accept = negotiate::accept(&headers)?;
    let def = t.def.clone();
    let scale = t.sub == Some(Sub::Scale);
    if def.custom.is_some()
        && !scale
        && matches!(method, Method::POST | Method::PUT | Method::PATCH)
    {
        // custom resources are JSON (and YAML) only, and have no strategic merge patch (their
        // `scale` is the built-in autoscaling/v1 Scale, which has)
        let ty = negotiate::body_type(&headers)?;
        if matches!(ty, BodyType::Protobuf | BodyType::StrategicMergePatch) {
            let ct = headers
                .get(axum::http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            return Err(crate::crd::unsupported_media_type(ct));
        }
    }
    let ns = t.namespace.as_deref();
    if def.namespaced && t.name.is_some() && ns.is_none() {
        return Err(ApiError::no_route(&format!(
            "{} without a namespace",
            def.plural
        )));
    }
    let Some(name) = t.name.as_deref() else {
        return match method {
            Method::GET if flag(&q, "watch") => Ok(watch_collection(state, &t, &q, accept)?),
            Method::GET => list(&state, &def, ns, &q, accept).await,
            Method::POST => {
                let obj = negotiate::decode_object(&body, negotiate::body_type(&headers)?)?;
                let writer = managedfields::writer(&q, &headers, None, "CreateOptions")?;
                let create = objects::create(&state, &def, ns, obj, write_opts(&q)?);
                let created = managedfields::creating(&def, writer, create).await?;
                Ok(object_response(
                    &def,
                    StatusCode::CREATED,
                    &created,
                    accept,
                    &q,
                ))
            }
            Method::DELETE => delete_collection(&state, &def, ns, &q, &body).await,
            _ => Err(ApiError::method_not_supported(def.plural, method.as_str())),
        };
    };
    match (t.sub, method) {
        (None, Method::GET) => {
            let obj = objects::get(&state, &def, ns, name).await?;
            Ok(object_response(&def, StatusCode::OK, &obj, accept, &q))
        }
        (
            None
            | Some(
                Sub::Status
                | Sub::Finalize
                | Sub::EphemeralContainers
                | Sub::Approval
                | Sub::Resize,
            ),
            Method::PUT,
        ) => {
            let part = match t.sub {
                Some(Sub::Status) => Part::Status,
                Some(Sub::Finalize) => Part::Finalize,
                Some(Sub::EphemeralContainers) => Part::EphemeralContainers,
                Some(Sub::Approval) => Part::Approval,
                Some(Sub::Resize) => Part::Resize,
                _ => Part::Main,
            };
            let obj = negotiate::decode_object(&body, negotiate::body_type(&headers)?)?;
            let writer = managedfields::writer(&q, &headers, sub_name(t.sub), "UpdateOptions")?;
            let opts = write_opts(&q)?;
            let updated = if part == Part::Resize {
                let body = |_: &Value| Ok(obj.clone());
                let write = |rv: i64| {
                    let mut pinned = obj.clone();
                    if crate::meta::meta_str(&pinned, "resourceVersion").is_none_or(str::is_empty) {
                        crate::meta::metadata_mut(&mut pinned)
                            .insert("resourceVersion".into(), json!(rv.to_string()));
                    }
                    update(&state, &def, ns, name, pinned, part, opts, &writer)
                };
                admitted_resize(&state, &def, ns, name, body, opts, write).await?
            } else {
                update(&state, &def, ns, name, obj, part, opts, &writer).await?
            };
            Ok(object_response(&def, StatusCode::OK, &updated, accept, &q))
        }
        (None, Method::PATCH) if negotiate::body_type(&headers)? == BodyType::ApplyPatch => {
            let applied = negotiate::decode_object(&body, BodyType::ApplyPatch)?;
            let force = flag(&q, "force");
            let (obj, created) = crate::apply::apply(
                &state,
                &def,
                ns,
                name,
                applied,
                q.get("fieldManager").map(String::as_str),
                force,
                write_opts(&q)?,
            )
            .await?;
            let code = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(object_response(&def, code, &obj, accept, &q))
        }
        (
            None | Some(Sub::Status | Sub::EphemeralContainers | Sub::Approval | Sub::Resize),
            Method::PATCH,
        ) => {
            let part = match t.sub {
                Some(Sub::Status) => Part::Status,
                Some(Sub::EphemeralContainers) => Part::EphemeralContainers,
                Some(Sub::Approval) => Part::Approval,
                Some(Sub::Resize) => Part::Resize,
                _ => Part::Main,
            };
            let ty = negotiate::body_type(&headers)?;
            let patch = decode_patch(&body, ty)?;
            let opts = write_opts(&q)?;
            let writer = patch_writer(&q, &headers, sub_name(t.sub))?;
            let default_class = crate::priority::default_before_update(&state, &def).await?;
            let write = |precondition: Option<i64>| {
                objects::guaranteed_update(
                    &state,
                    &def,
                    ns,
                    name,
                    precondition,
                    opts.dry_run,
                    |cur| {
                        let patched = crate::patch::apply(ty, cur, &patch)?;
                        check_patched_rv(&def, name, cur, &patched)?;
                        let mut out =
                            objects::prepare_update(&def, cur, patched, part, opts.strict)?;
                        crate::priority::check_update(&out, default_class.as_deref())?;
                        managedfields::on_update(&def, cur, &mut out, &writer);
                        Ok(out)
                    },
                )
            };
            let updated = if part == Part::Resize {
                let body = |cur: &Value| crate::patch::apply(ty, cur, &patch);
                let write = |rv: i64| write(Some(rv));
                admitted_resize(&state, &def, ns, name, body, opts, write).await?
            } else {
                write(None).await?
            };
            Ok(object_response(&def, StatusCode::OK, &updated, accept, &q))
        }
        (None, Method::DELETE) => {
            crate::nodeauth::restriction::admit_delete(&state, &def, ns, name).await?;
            let opts = delete_opts(&q, &body)?;
            let (obj, _gone) = objects::delete(&state, &def, ns, name, &opts).await?;
            Ok(object_response(&def, StatusCode::OK, &obj, accept, &q))
        }
        (
            Some(Sub::Status | Sub::EphemeralContainers | Sub::Approval | Sub::Resize),
            Method::GET,
        ) => {
            let obj = objects::get(&state, &def, ns, name).await?;
            Ok(object_response(&def, StatusCode::OK, &obj, accept, &q))
        }
        (Some(Sub::Scale), m) => {
            let writer = match m {
                Method::PUT => managedfields::writer(&q, &headers, Some("scale"), "UpdateOptions")?,
                _ => patch_writer(&q, &headers, Some("scale"))?,
            };
            let dry = dry_run(&q)?;
            crate::subresources::scale(&state, &def, ns, name, m, &headers, &body, dry, &writer)
                .await
        }
        (Some(Sub::Log), Method::GET) => crate::kubelet::pod_log(&state, &def, ns, name, &q).await,
        (Some(Sub::Binding), Method::POST) => {
            crate::subresources::binding(&state, &def, ns, name, &headers, &body).await
        }
        (Some(Sub::Token), Method::POST) => {
            let ns = ns.unwrap_or_default();
            crate::nodeauth::restriction::admit_token_request(&state, ns, name, &headers, &body)
                .await?;
            crate::serviceaccount::token_request(&state, ns, name, &headers, &body).await
        }
        (Some(Sub::Eviction), Method::POST) => {
            let dry = dry_run(&q)?;
            crate::nodeauth::restriction::admit_eviction(&state, ns, name).await?;
            crate::subresources::eviction(&state, &def, ns, name, &headers, &body, dry).await
        }
        (sub, m) => Err(ApiError::method_not_supported(
            &sub.map_or(def.plural.to_string(), |s| {
                format!("{}/{}", def.plural, s.name())
            }),
            m.as_str(),
        )),
    }
}

pub fn decode_patch(body: &Bytes, ty: BodyType) -> Result<Value, ApiError> {
    match ty {
        BodyType::Json | BodyType::Yaml | BodyType::Protobuf => Err(
            ApiError::unsupported_media_type("application/json (PATCH needs a patch media type)"),
        ),
        BodyType::ApplyPatch => Err(ApiError::unsupported_media_type(
            "application/apply-patch+yaml (server-side apply is not supported yet)",
        )),
        _ => negotiate::decode(body, ty),
    }
}

fn sub_name(sub: Option<Sub>) -> Option<&'static str> {
    sub.map(Sub::name)
}

/// The writer of a patch other than server-side apply; `force` is for apply only (a 422, as
/// upstream's PatchOptions validation).
fn patch_writer(
    q: &Query,
    headers: &HeaderMap,
    sub: Option<&'static str>,
) -> Result<managedfields::Writer, ApiError> {
    if q.contains_key("force") {
        return Err(ApiError::invalid(
            "PatchOptions",
            "meta.k8s.io",
            "",
            vec![(
                "force".into(),
                "FieldValueForbidden",
                "Forbidden: may not be specified for non-apply patch".into(),
            )],
        ));
    }
    managedfields::writer(q, headers, sub, "PatchOptions")
}

/// A patch that sets `metadata.resourceVersion` makes the write conditional on it.
pub fn check_patched_rv(
    def: &ResourceDef,
    name: &str,
    cur: &Value,
    patched: &Value,
) -> Result<(), ApiError> {
    let want = patched
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str);
    let have = cur
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str);
    if want.is_some_and(|w| !w.is_empty()) && want != have {
        return Err(ApiError::conflict(def.plural, def.group, name));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
pub async fn update(
    state: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    name: &str,
    obj: Value,
    part: Part,
    opts: objects::WriteOpts,
    writer: &managedfields::Writer,
) -> Result<Value, ApiError> {
    match crate::meta::meta_str(&obj, "name") {
        Some(n) if n == name => {}
        Some(n) => {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name})"
            )))
        }
        None => {}
    }
    if def.namespaced {
        if let (Some(body_ns), Some(ns)) = (crate::meta::meta_str(&obj, "namespace"), ns) {
            if !body_ns.is_empty() && body_ns != ns {
                return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
            }
        }
    }
    let precondition = match crate::meta::meta_str(&obj, "resourceVersion") {
        Some(rv) if !rv.is_empty() => Some(objects::parse_rv(rv)?),
        _ => None,
    };
    if def.custom.is_some() && precondition.is_none() {
        // custom resources do not allow unconditional updates (upstream's strategy)
        return Err(ApiError::invalid(
            def.kind,
            def.group,
            name,
            vec![(
                "metadata.resourceVersion".into(),
                "FieldValueInvalid",
                "Invalid value: 0x0: must be specified for an update".into(),
            )],
        ));
    }
    let default_class = match part {
        Part::Main => crate::priority::default_before_update(state, def).await?,
        _ => None,
    };
    objects::guaranteed_update(state, def, ns, name, precondition, opts.dry_run, |cur| {
        let mut out = objects::prepare_update(def, cur, obj.clone(), part, opts.strict)?;
        crate::priority::check_update(&out, default_class.as_deref())?;
        managedfields::on_update(def, cur, &mut out, writer);
        Ok(out)
    })
    .await
}

fn delete_opts(q: &Query, body: &Bytes) -> Result<DeleteOpts, ApiError> {
    let b: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        negotiate::decode(body, BodyType::Json)?
    };
    let grace = match q.get("gracePeriodSeconds") {
        Some(g) => Some(
            g.parse::<i64>()
                .map_err(|_| ApiError::bad_request(format!("invalid gracePeriodSeconds {g:?}")))?,
        ),
        None => b.get("gracePeriodSeconds").and_then(Value::as_i64),
    };
    let propagation = q.get("propagationPolicy").cloned().or_else(|| {
        b.get("propagationPolicy")
            .and_then(Value::as_str)
            .map(String::from)
    });
    if let Some(p) = &propagation {
        if !matches!(p.as_str(), "Orphan" | "Background" | "Foreground") {
            return Err(ApiError::bad_request(format!(
                "unsupported propagationPolicy {p:?}: expected Orphan, Background or Foreground"
            )));
        }
    }
    let dry = dry_run(q)?
        || b.get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|v| v == "All"));
    Ok(DeleteOpts {
        grace_period: grace,
        propagation,
        precondition_uid: b
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(String::from),
        precondition_rv: b
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(String::from),
        dry_run: dry,
    })
}

async fn delete_collection(
    state: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    q: &Query,
    body: &Bytes,
) -> Result<Response, ApiError> {
    let opts = delete_opts(q, body)?;
    let page = objects::list(
        state,
        def,
        ns,
        &ListOpts {
            filter: filter(def, q)?,
            ..Default::default()
        },
    )
    .await?;
    let mut deleted = Vec::new();
    for obj in page.items {
        let name = crate::meta::meta_str(&obj, "name")
            .unwrap_or("")
            .to_string();
        let ons = crate::meta::meta_str(&obj, "namespace").map(String::from);
        match objects::delete(state, def, ons.as_deref(), &name, &opts).await {
            Ok((o, _)) => deleted.push(o),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    let list = json!({"kind": def.list_kind(), "apiVersion": def.api_version(), "metadata": {"resourceVersion": page.revision.to_string()}, "items": deleted});
    Ok(negotiate::respond(
        StatusCode::OK,
        &list,
        negotiate::Format::Json,
    ))
}

async fn list(
    state: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    q: &Query,
    accept: Accept,
) -> Result<Response, ApiError> {
    let limit = match q.get("limit") {
        Some(l) => Some(
            l.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        ),
        None => None,
    };
    let opts = ListOpts {
        filter: filter(def, q)?,
        limit,
        continue_token: q.get("continue").filter(|c| !c.is_empty()).cloned(),
        resource_version: q.get("resourceVersion").cloned(),
        resource_version_match: q.get("resourceVersionMatch").cloned(),
    };
    let page = crate::list::list_page(state, def, ns, &opts).await?;
    let mut list_meta = json!({"resourceVersion": page.revision.to_string()});
    if let Some(c) = &page.continue_token {
        list_meta["continue"] = json!(c);
    }
    if let (crate::list::Items::Cached(items), None, false, negotiate::Format::Json) = (
        &page.items,
        accept.table,
        accept.partial_metadata,
        accept.format,
    ) {
        // The cache's objects are JSON already: copy them, encode nothing.
        let body = crate::list::json_list(def, &list_meta, items);
        return Ok((
            StatusCode::OK,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response());
    }
    let items = page.items.into_values()?;
    let body = if let Some(v) = accept.table {
        table::table(
            def,
            &items,
            Include::parse(q.get("includeObject").map(String::as_str)),
            v,
            list_meta,
        )
    } else if accept.partial_metadata {
        let items: Vec<Value> = items.iter().map(partial_metadata).collect();
        json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta, "items": items})
    } else {
        json!({"kind": def.list_kind(), "apiVersion": def.api_version(), "metadata": list_meta, "items": items})
    };
    Ok(negotiate::respond(StatusCode::OK, &body, accept.format))
}

fn partial_metadata(obj: &Value) -> Value {
    json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj.get("metadata").cloned().unwrap_or(json!({}))})
}

pub fn object_response(
    def: &ResourceDef,
    status: StatusCode,
    obj: &Value,
    accept: Accept,
    q: &Query,
) -> Response {
    let converted;
    let body = if let Some(v) = accept.table {
        let rv = obj
            .pointer("/metadata/resourceVersion")
            .cloned()
            .unwrap_or(json!(""));
        converted = table::table(
            def,
            std::slice::from_ref(obj),
            Include::parse(q.get("includeObject").map(String::as_str)),
            v,
            json!({"resourceVersion": rv}),
        );
        &converted
    } else if accept.partial_metadata {
        converted = partial_metadata(obj);
        &converted
    } else {
        obj
    };
    negotiate::respond(status, body, accept.format)
}

fn watch_collection(
    state: Arc<AppState>,
    t: &Target,
    q: &Query,
    accept: Accept,
) -> Result<Response, ApiError> {
    let asked = match q.get("timeoutSeconds") {
        Some(s) => s
            .parse::<u64>()
            .map_err(|_| ApiError::bad_request(format!("invalid timeoutSeconds {s:?}")))?,
        None => 0,
    };
    // upstream's server-side timeout for watches that set none (or 0)
    let timeout = Some(match asked {
        0 => state.timeouts.watch(),
        n => Duration::from_secs(n),
    });
    let opts = WatchOpts {
        filter: filter(&t.def, q)?,
        resource_version: q.get("resourceVersion").cloned(),
        bookmarks: flag(q, "allowWatchBookmarks"),
        send_initial_events: flag(q, "sendInitialEvents"),
        timeout,
        include: Include::parse(q.get("includeObject").map(String::as_str)),
    };
    Ok(watch::watch(
        state,
        t.def.clone(),
        t.namespace.clone(),
        opts,
        accept,
    ))
}

/// A `pods/resize` write with LimitRanger and ResourceQuota admission (`crate::limitranger`,
/// `crate::quota::admit_resize`): what `body` makes of the pod as read is checked (and
/// charged), then `write` stores it pinned to that read's resourceVersion, so what is stored
/// is what was admitted. A conflict because the pod changed in between starts over from the
/// pod as it is now; one the request itself brought (a stale resourceVersion) is its answer.
async fn admitted_resize<W, Fut>(
    state: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    name: &str,
    body: impl Fn(&Value) -> Result<Value, ApiError>,
    opts: objects::WriteOpts,
    write: W,
) -> Result<Value, ApiError>
where
    W: Fn(i64) -> Fut,
    Fut: std::future::Future<Output = Result<Value, ApiError>>,
{
    let revision = |obj: &Value| {
        objects::parse_rv(crate::meta::meta_str(obj, "resourceVersion").unwrap_or_default())
    };
    let mut cur = objects::get(state, def, ns, name).await?;
    loop {
        let rv = revision(&cur)?;
        let asked = body(&cur)?;
        // a stale resourceVersion is refused before admission charges anything (upstream
        // checks the precondition before its admission runs)
        match crate::meta::meta_str(&asked, "resourceVersion") {
            Some(v) if !v.is_empty() && objects::parse_rv(v)? != rv => {
                return Err(ApiError::conflict(def.plural, def.group, name));
            }
            _ => {}
        }
        let resized = objects::prepare_update(def, &cur, asked, Part::Resize, opts.strict)?;
        crate::limitranger::admit_resize(state, def, ns.unwrap_or_default(), &resized).await?;
        crate::quota::admit_resize(
            state,
            def,
            ns.unwrap_or_default(),
            &cur,
            &resized,
            name,
            opts.dry_run,
        )
        .await?;
        match write(rv).await {
            Err(e) if e.code == 409 => {
                let now = objects::get(state, def, ns, name).await?;
                if revision(&now)? == rv {
                    return Err(e);
                }
                cur = now;
            }
            written => return written,
        }
    }
}
