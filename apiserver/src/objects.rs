//! The object lifecycle over the store, independent of HTTP: read, create, update
//! (compare-and-swap with retries); listing is in [`crate::list`], deletion in
//! [`crate::delete`]. Handlers, subresources, patch and the namespace finalizer all go
//! through here.

use bytes::Bytes;
use serde_json::{json, Value};
use store::{KeyValue, StoreError};

pub use crate::delete::{delete, DeleteOpts};
pub use crate::list::{list, ListOpts};

use crate::kinds;
use crate::meta;
use crate::registry::ResourceDef;
use crate::state::AppState;
use crate::status::{from_store, ApiError};
use crate::webhooks::Operation::{Create, Update};

/// Parse a stored value and stamp its `resourceVersion` (the key's `mod_revision`).
pub fn decode_kv(def: &ResourceDef, kv: &KeyValue) -> Result<Value, ApiError> {
    let mut v: Value = serde_json::from_slice(&kv.value).map_err(|e| {
        ApiError::internal(
            crate::encryption::undecryptable(&kv.key, &kv.value)
                .unwrap_or_else(|| format!("decoding stored object {}: {e}", kv.key)),
        )
    })?;
    meta::metadata_mut(&mut v).insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
    if let Some(c) = def.conversion {
        v = (c.from_storage)(v);
    }
    if let Some(c) = &def.custom {
        crate::crd::from_storage(def, c, &mut v);
    }
    Ok(v)
}

/// What is stored: the object without its `resourceVersion` (that is the store's revision).
pub(crate) fn encode(def: &ResourceDef, obj: &Value) -> Bytes {
    // custom resources of every served version are stored as the storage version
    let as_stored = def
        .custom
        .as_ref()
        .map(|c| crate::crd::storage_api_version(def, c))
        .filter(|av| obj.get("apiVersion").and_then(Value::as_str) != Some(av.as_str()));
    if def.conversion.is_none()
        && as_stored.is_none()
        && obj.pointer("/metadata/resourceVersion").is_none()
    {
        // Already in stored form (e.g. a new object): no copy needed.
        return Bytes::from(serde_json::to_vec(obj).unwrap_or_default());
    }
    let mut v = match def.conversion {
        Some(c) => (c.to_storage)(obj.clone()),
        None => obj.clone(),
    };
    meta::metadata_mut(&mut v).remove("resourceVersion");
    if let (Some(av), Some(m)) = (as_stored, v.as_object_mut()) {
        m.insert("apiVersion".into(), json!(av));
    }
    Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
}

fn same_ignoring_rv(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        meta::metadata_mut(&mut v).remove("resourceVersion");
        v
    };
    strip(a) == strip(b)
}

pub fn parse_rv(rv: &str) -> Result<i64, ApiError> {
    rv.parse::<i64>().ok().filter(|r| *r >= 0).ok_or_else(|| {
        ApiError::bad_request(format!(
            "invalid resource version {rv:?}: must be a non-negative integer"
        ))
    })
}

impl AppState {
    pub fn key(&self, def: &ResourceDef, ns: Option<&str>, name: &str) -> String {
        self.storage
            .key(def.storage_name, ns.filter(|_| def.namespaced), name)
    }

    pub fn store(&self, def: &ResourceDef) -> &std::sync::Arc<dyn store::Store> {
        self.storage.store_for(storage_group(def), def.plural)
    }

    pub fn prefix(&self, def: &ResourceDef, ns: Option<&str>) -> String {
        self.storage
            .list_prefix(def.storage_name, ns.filter(|_| def.namespaced))
    }
}

/// The group whose store holds `def`: a converted version lives wherever the version it is
/// stored as lives (events.k8s.io events are stored as core events).
pub fn storage_group(def: &ResourceDef) -> &'static str {
    def.conversion.map_or(def.group, |c| c.storage_group)
}

pub async fn get(
    state: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    name: &str,
) -> Result<Value, ApiError> {
    let key = state.key(def, ns, name);
    match state.store(def).get(&key).await {
        Ok(Some(kv)) => decode_kv(def, &kv),
        Ok(None) => Err(ApiError::not_found(def.plural, def.group, name)),
        Err(e) => Err(from_store(e, def.plural, def.group, name)),
    }
}

/// Where an object's namespace must be when it is created in `ns`.
/// Answered from memory when [`crate::nscache`] knows `ns` is active, else from the store.
async fn check_namespace(state: &AppState, def: &ResourceDef, ns: &str) -> Result<(), ApiError> {
    if state.namespaces.is_active(ns) {
        return Ok(());
    }
    let ns_def = state
        .registry
        .get("", "v1", "namespaces")
        .expect("namespaces are built in");
    match get(state, ns_def, None, ns).await {
        Ok(obj) if meta::is_deleting(&obj) => Err(ApiError::forbidden(
            def.plural,
            def.group,
            "",
            &format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            ),
        )),
        Ok(_) => Ok(()),
        Err(e) if e.code == 404 => Err(ApiError::not_found("namespaces", "", ns)),
        Err(e) => Err(e),
    }
}

/// Reject bodies whose kind or apiVersion name another resource.
fn check_type(def: &ResourceDef, obj: &mut Value) -> Result<(), ApiError> {
    let want_av = def.api_version();
    if let Some(av) = obj.get("apiVersion").and_then(Value::as_str) {
        if av != want_av {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({want_av})"
            )));
        }
    }
    if let Some(k) = obj.get("kind").and_then(Value::as_str) {
        if k != def.kind {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                def.kind
            )));
        }
    }
    obj["apiVersion"] = json!(want_av);
    obj["kind"] = json!(def.kind);
    Ok(())
}

fn check_namespace_field(
    def: &ResourceDef,
    obj: &mut Value,
    ns: Option<&str>,
) -> Result<(), ApiError> {
    let m = meta::metadata_mut(obj);
    if def.namespaced {
        let ns = ns.ok_or_else(|| {
            ApiError::bad_request(format!(
                "{} are namespaced: the request needs a namespace",
                def.plural
            ))
        })?;
        match m.get("namespace").and_then(Value::as_str) {
            Some(body_ns) if !body_ns.is_empty() && body_ns != ns => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ))
            }
            _ => {
                m.insert("namespace".into(), json!(ns));
            }
        }
    } else {
        m.remove("namespace");
    }
    Ok(())
}

/// Typed decode, unknown-field handling and per-kind validation. A malformed object is a 400,
/// unknown fields are a 400 under `fieldValidation=Strict` and dropped otherwise, field
/// problems are a 422. Returns the object as it will be stored.
fn check_object(
    def: &ResourceDef,
    obj: &Value,
    old: Option<&Value>,
    strict: bool,
) -> Result<Value, ApiError> {
    let name = meta::meta_str(obj, "name").unwrap_or("");
    let cannot = |why: String| {
        ApiError::bad_request(format!(
            "{} in version {:?} cannot be handled as a {}: {why}",
            def.kind, def.version, def.kind
        ))
    };
    // labels, annotations and finalizers: upstream's ValidateObjectMeta, for every kind
    let meta_causes = meta::names::object_meta_causes(obj);
    if let Some(c) = &def.custom {
        if !meta_causes.is_empty() {
            return Err(ApiError::invalid(def.kind, def.group, name, meta_causes));
        }
        return crate::crd::check_object(def, c, obj, old, strict);
    }
    let typed = (def.roundtrip)(obj).map_err(cannot)?;
    if strict {
        let mut unknown = Vec::new();
        unknown_fields(obj, &typed, "", &mut unknown);
        if !unknown.is_empty() {
            let list: Vec<String> = unknown
                .iter()
                .map(|f| format!("unknown field {f:?}"))
                .collect();
            return Err(cannot(format!(
                "strict decoding error: {}",
                list.join(", ")
            )));
        }
    }
    let mut causes = meta_causes;
    causes.extend(kinds::validate(def, &typed, old));
    if !causes.is_empty() {
        return Err(ApiError::invalid(def.kind, def.group, name, causes));
    }
    Ok(typed)
}

/// Paths of fields set in `input` that the typed round trip dropped.
fn unknown_fields(input: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (input, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                if v.is_null() {
                    continue;
                }
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    None => out.push(p),
                    Some(t) => unknown_fields(v, t, &p, out),
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                unknown_fields(x, y, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn check_name(def: &ResourceDef, name: &str) -> Result<(), ApiError> {
    if crate::aggregator::is_apiservice(def) {
        // `v1.` and the like: validated as `<version>.<group>` (`crate::aggregator::validation`)
        return Ok(());
    }
    // upstream's name rule per kind: Namespaces DNS-1123 labels, Services DNS-1035 labels,
    // RBAC objects path segments (`system:aggregate-to-edit`), the rest DNS subdomains
    let msgs = if def.plural == "namespaces" && def.group.is_empty() {
        meta::names::dns1123_label(name)
    } else if def.plural == "services" && def.group.is_empty() {
        meta::names::dns1035_label(name)
    } else if def.group == "rbac.authorization.k8s.io" {
        crate::kinds::field::path_segment(name)
    } else if def.group == "networking.k8s.io" && def.plural == "ipaddresses" {
        crate::kinds::servicecidr::ip_errors(name)
    } else {
        meta::names::dns1123_subdomain(name)
    };
    if msgs.is_empty() {
        return Ok(());
    }
    let causes = meta::names::invalid_causes("metadata.name", name, msgs).collect();
    Err(ApiError::invalid(def.kind, def.group, name, causes))
}

/// How a write is carried out: `dryRun=All` and `fieldValidation=Strict`.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteOpts {
    pub dry_run: bool,
    pub strict: bool,
}

pub async fn create(
    state: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    mut obj: Value,
    opts: WriteOpts,
) -> Result<Value, ApiError> {
    let dry_run = opts.dry_run;
    check_type(def, &mut obj)?;
    check_namespace_field(def, &mut obj, ns)?;
    let ns = ns.filter(|_| def.namespaced);
    let m = meta::metadata_mut(&mut obj);
    if m.get("resourceVersion")
        .and_then(Value::as_str)
        .is_some_and(|s| !s.is_empty())
    {
        return Err(ApiError::bad_request(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    let generate = m
        .get("generateName")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let given = m
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if given.is_empty() && generate.is_empty() {
        return Err(ApiError::invalid(
            def.kind,
            def.group,
            "",
            vec![(
                "metadata.name".into(),
                "FieldValueRequired",
                "Required value: name or generateName is required".into(),
            )],
        ));
    }
    for f in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "resourceVersion",
    ] {
        m.remove(f);
    }
    m.insert("uid".into(), json!(meta::new_uid()));
    m.insert("creationTimestamp".into(), json!(meta::now()));
    m.remove("generation");
    if kinds::tracks_generation(def) {
        m.insert("generation".into(), json!(1));
    }
    if let Some(c) = &def.custom {
        crate::crd::prepare_create(def, c, &mut obj)?;
    }
    kinds::prepare_create(def, &mut obj);
    kinds::default_object(def, &mut obj);
    crate::managedfields::on_create(def, &mut obj);

    if let Some(ns) = ns {
        check_namespace(state, def, ns).await?;
        // upstream's order: LimitRanger first among the mutating plugins
        crate::limitranger::admit_create(state, def, ns, &mut obj).await?;
        if def.group.is_empty() && def.plural == "pods" {
            crate::serviceaccount::admission::admit(state, ns, &mut obj).await?;
            crate::priority::admit_pod(state, &mut obj).await?;
            crate::runtimeclass::admit_pod(state, &mut obj).await?;
            crate::defaulttolerationseconds::admit_pod(state.default_toleration_seconds, &mut obj);
        }
        if def.group.is_empty() && def.plural == "persistentvolumeclaims" {
            crate::storageadmission::admit_claim(state, &mut obj).await?;
        }
    }
    if def.group.is_empty() && def.plural == "persistentvolumes" {
        crate::storageadmission::admit_volume(state, &mut obj);
    }
    // mutating webhooks after the built-in mutating plugins, as upstream orders them
    crate::webhooks::mutate(
        state,
        &webhook_request(def, ns, Create, dry_run),
        &mut obj,
        None,
    )
    .await?;
    // upstream's BeforeCreate: a generateName becomes a name after the mutating plugins and
    // before the validating ones (PodSecurity, quota, webhooks), whose refusals name it
    // (`pods "web-7d9f-x2k4q" is forbidden: exceeded quota: ...`)
    let generated = given.is_empty();
    let mut given = given;
    if generated {
        given = generated_name(&generate);
        meta::metadata_mut(&mut obj).insert("name".into(), json!(given));
    }
    if let Some(ns) = ns {
        crate::podsecurity::admit_create(state, def, Some(ns), &obj).await?;
        // DRA admin access only in namespaces labelled for it (upstream's strategy check)
        if def.group == "resource.k8s.io" && kinds::dra::requests_admin_access(def.kind, &obj) {
            let labels = crate::podsecurity::namespace_labels(state, ns).await?;
            if let Some(cause) = kinds::dra::admin_access_denied(labels.as_ref()) {
                return Err(ApiError::invalid(def.kind, def.group, &given, vec![cause]));
            }
        }
        crate::quota::admit(state, def, ns, &obj, &given, dry_run).await?;
    }
    if def.group == "scheduling.k8s.io" && def.plural == "priorityclasses" {
        crate::priority::validate_class_create(state, &obj).await?;
    }
    if is_csr(def) {
        crate::certificates::prepare_create(&mut obj, crate::requester::current().as_ref());
        crate::certificates::admit_create(&obj)?;
    }
    if crate::aggregator::is_apiservice(def) {
        crate::aggregator::prepare_create(&mut obj);
    }
    crate::nodeauth::restriction::admit_create(state, def, ns, &obj).await?;
    if ns.is_none() {
        crate::podsecurity::admit_create(state, def, None, &obj).await?;
    }
    // Services get their ClusterIP and node ports before they are stored, and give them
    // back when the create fails. A dry run shows what upstream's would, taking nothing.
    let is_service = def.group.is_empty() && def.plural == "services";
    if is_service {
        // the ClusterIP's IPAddress names its Service: its name is final (a generated one
        // that collides fails as a given name's would, instead of being retried)
        check_name(def, &given)?;
        crate::services::allocate(state, def, &mut obj, dry_run).await?;
    }
    let retry_name = (generated && !is_service).then_some(generate.as_str());
    let held = is_service.then(|| obj.clone());
    let result = create_named(state, def, ns, obj, &given, retry_name, opts).await;
    if let (Err(_), Some(held), false) = (&result, held, dry_run) {
        crate::services::release(state, &held).await;
    }
    result
}

/// `generateName` plus five random characters, the base cut to 58 as upstream's
/// `SimpleNameGenerator` cuts it.
fn generated_name(generate: &str) -> String {
    let mut base = generate.to_string();
    if base.len() > 58 {
        let mut cut = 58;
        while !base.is_char_boundary(cut) {
            cut -= 1;
        }
        base.truncate(cut);
    }
    format!("{base}{}", meta::random_suffix())
}

/// Store `obj` as `name`; with `retry_name` (its `generateName`), a collision is retried
/// under a fresh generated name, as upstream's clients would.
async fn create_named(
    state: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    mut obj: Value,
    name: &str,
    retry_name: Option<&str>,
    opts: WriteOpts,
) -> Result<Value, ApiError> {
    for attempt in 0..8 {
        let name = match retry_name {
            Some(generate) if attempt > 0 => generated_name(generate),
            _ => name.to_string(),
        };
        meta::metadata_mut(&mut obj).insert("name".into(), json!(name));
        check_name(def, &name)?;
        let checked = check_object(def, &obj, None, opts.strict)?;
        let webhooks = webhook_request(def, ns, Create, opts.dry_run);
        crate::webhooks::validate(state, &webhooks, Some(&checked), None).await?;
        if opts.dry_run {
            return Ok(checked);
        }
        let key = state.key(def, ns, &name);
        match state.store(def).create(&key, encode(def, &checked)).await {
            // What was stored is `checked`: answer with it rather than decoding it again.
            Ok(kv) if def.conversion.is_none() => {
                let mut obj = checked;
                meta::metadata_mut(&mut obj)
                    .insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
                return Ok(obj);
            }
            Ok(kv) => return decode_kv(def, &kv),
            Err(StoreError::AlreadyExists { .. }) if retry_name.is_some() => continue,
            Err(e) => return Err(from_store(e, def.plural, def.group, &name)),
        }
    }
    Err(ApiError::timeout(
        "could not find a free name for generateName after 8 tries",
    ))
}

fn webhook_request<'a>(
    def: &'a ResourceDef,
    ns: Option<&'a str>,
    operation: crate::webhooks::Operation,
    dry_run: bool,
) -> crate::webhooks::Request<'a> {
    crate::webhooks::Request {
        def,
        ns,
        operation,
        dry_run,
    }
}

/// After an object is gone from the store: give back what it held.
pub(crate) async fn after_delete(state: &AppState, def: &ResourceDef, obj: &Value) {
    if def.group.is_empty() && def.plural == "services" {
        crate::services::release(state, obj).await;
    }
}

/// `obj[field] = value`, or no `field` for None (`obj` an object).
fn set_or_remove(obj: &mut Value, field: &str, value: Option<&Value>) {
    if let Some(m) = obj.as_object_mut() {
        match value {
            Some(v) => m.insert(field.into(), v.clone()),
            None => m.remove(field),
        };
    }
}

/// Which part of the object an update may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Everything but status (when the kind has a status subresource).
    Main,
    Status,
    /// `namespaces/<n>/finalize`: only `spec.finalizers`.
    Finalize,
    /// `pods/<n>/ephemeralcontainers`: only `spec.ephemeralContainers`.
    EphemeralContainers,
    /// `certificatesigningrequests/<n>/approval`: only `status.conditions`.
    Approval,
    /// `pods/<n>/resize`: only the containers' resources and resize policies
    /// (`kinds::resize`).
    Resize,
}

fn is_csr(def: &ResourceDef) -> bool {
    def.group == crate::certificates::GROUP && def.kind == "CertificateSigningRequest"
}

/// Merge an incoming full object into the current one for an update of `part`.
pub fn prepare_update(
    def: &ResourceDef,
    cur: &Value,
    mut new: Value,
    part: Part,
    strict: bool,
) -> Result<Value, ApiError> {
    check_type(def, &mut new)?;
    let mut out = match part {
        Part::Main => {
            if def.has(crate::registry::Sub::Status) {
                match cur.get("status") {
                    Some(s) => new["status"] = s.clone(),
                    None => {
                        if let Some(m) = new.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            new
        }
        Part::Status => {
            let mut out = cur.clone();
            match new.get("status") {
                Some(s) => out["status"] = s.clone(),
                None => {
                    if let Some(m) = out.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
            out
        }
        Part::Finalize => {
            let mut out = cur.clone();
            out["spec"]["finalizers"] = new
                .pointer("/spec/finalizers")
                .cloned()
                .unwrap_or(json!([]));
            out
        }
        Part::EphemeralContainers => {
            let mut out = cur.clone();
            set_or_remove(
                &mut out["spec"],
                "ephemeralContainers",
                new.pointer("/spec/ephemeralContainers"),
            );
            out
        }
        Part::Resize => {
            let out = kinds::resize::prepare(cur, &new).map_err(|causes| {
                ApiError::invalid(
                    def.kind,
                    def.group,
                    meta::meta_str(cur, "name").unwrap_or(""),
                    causes,
                )
            })?;
            // the resize is validated: the rest of the pod is checked against itself, so the
            // update rule that keeps container resources fixed does not refuse it
            let mut resized_cur = cur.clone();
            resized_cur["spec"] = out["spec"].clone();
            if let Some(g) = out.pointer("/metadata/generation") {
                resized_cur["metadata"]["generation"] = g.clone();
            }
            let mut out = out;
            kinds::default_object(def, &mut out);
            return check_object(def, &out, Some(&resized_cur), strict);
        }
        Part::Approval => {
            let mut out = cur.clone();
            if !out["status"].is_object() {
                out["status"] = json!({});
            }
            set_or_remove(
                &mut out["status"],
                "conditions",
                new.pointer("/status/conditions"),
            );
            out
        }
    };
    if is_csr(def) {
        crate::certificates::prepare_update(cur, &mut out, part);
    }
    // Only the ephemeralcontainers subresource changes a pod's ephemeral containers.
    if def.group.is_empty() && def.kind == "Pod" && part != Part::EphemeralContainers {
        set_or_remove(
            &mut out["spec"],
            "ephemeralContainers",
            cur.pointer("/spec/ephemeralContainers"),
        );
    }
    if def.group.is_empty() && def.plural == "services" && part == Part::Main {
        crate::services::carry_over(cur, &mut out);
    }
    if def.group.is_empty() && def.kind == "Pod" && part == Part::Main {
        crate::priority::carry_over(cur, &mut out);
    }
    // Fields the server owns survive whatever the client sent.
    let cur_meta = cur.get("metadata").cloned().unwrap_or(json!({}));
    let m = meta::metadata_mut(&mut out);
    for f in [
        "uid",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "name",
        "namespace",
        "generation",
    ] {
        match cur_meta.get(f) {
            Some(v) => {
                m.insert(f.into(), v.clone());
            }
            None => {
                m.remove(f);
            }
        }
    }
    kinds::default_object(def, &mut out);
    let annotations_changed = def.group == "apps"
        && def.kind == "Deployment"
        && cur.pointer("/metadata/annotations") != out.pointer("/metadata/annotations");
    if part == Part::Main
        && kinds::tracks_generation(def)
        && (kinds::spec_changed(cur, &out) || annotations_changed)
    {
        let g = cur_meta
            .get("generation")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        meta::metadata_mut(&mut out).insert("generation".into(), json!(g + 1));
    }
    check_object(def, &out, Some(cur), strict)
}

/// Read-modify-write with compare-and-swap, retried on conflicts unless the caller pinned a
/// `resourceVersion` (then a stale one is 409). `f` gets the current object and returns the
/// new one. An object being deleted whose last finalizer goes away is deleted.
pub async fn guaranteed_update<F>(
    state: &AppState,
    def: &ResourceDef,
    ns: Option<&str>,
    name: &str,
    precondition: Option<i64>,
    dry_run: bool,
    mut f: F,
) -> Result<Value, ApiError>
where
    F: FnMut(&Value) -> Result<Value, ApiError>,
{
    let key = state.key(def, ns, name);
    let store = state.store(def);
    loop {
        let kv = match store.get(&key).await {
            Ok(Some(kv)) => kv,
            Ok(None) => return Err(ApiError::not_found(def.plural, def.group, name)),
            Err(e) => return Err(from_store(e, def.plural, def.group, name)),
        };
        if precondition.is_some_and(|rv| rv != kv.mod_revision) {
            return Err(ApiError::conflict(def.plural, def.group, name));
        }
        let cur = decode_kv(def, &kv)?;
        let mut new = f(&cur)?;
        let webhooks = webhook_request(def, ns, Update, dry_run);
        if crate::webhooks::mutate(state, &webhooks, &mut new, Some(&cur)).await? {
            new = check_object(def, &new, Some(&cur), false)?;
        }
        meta::metadata_mut(&mut new)
            .insert("resourceVersion".into(), json!(kv.mod_revision.to_string()));
        // unchanged: no write, unless the stored form is stale (an old encryption key)
        if same_ignoring_rv(&cur, &new) && (dry_run || !store.stale(&key, kv.mod_revision).await) {
            return Ok(cur);
        }
        crate::podsecurity::admit_update(state, def, ns, &cur, &new).await?;
        crate::limitranger::admit_update(state, def, ns, &cur, &new).await?;
        if is_csr(def) {
            crate::certificates::admit_approval(state, &cur, &new)?;
            crate::certificates::admit_signing(state, &cur, &new)?;
        }
        crate::nodeauth::restriction::admit_update(state, def, &cur, &new)?;
        crate::webhooks::validate(state, &webhooks, Some(&new), Some(&cur)).await?;
        if dry_run {
            // a service shows what the update would take (it takes nothing)
            if def.group.is_empty() && def.plural == "services" {
                crate::services::reallocate(state, def, &cur, &mut new, true).await?;
            }
            return Ok(new);
        }
        if meta::is_deleting(&new)
            && meta::finalizers(&new).is_empty()
            && !is_graceful_pending(def, &new)
            && !crate::delete::held_by_spec_finalizers(def, &new)
        {
            match store.delete(&key, Some(kv.mod_revision)).await {
                Ok(_) => {
                    after_delete(state, def, &new).await;
                    return Ok(new);
                }
                Err(StoreError::Conflict { .. }) if precondition.is_none() => continue,
                Err(e) => return Err(from_store(e, def.plural, def.group, name)),
            }
        }
        // a service changing type or node ports takes and gives back what it holds
        let held = if def.group.is_empty() && def.plural == "services" {
            Some(crate::services::reallocate(state, def, &cur, &mut new, false).await?)
        } else {
            None
        };
        let result = store.update(&key, encode(def, &new), kv.mod_revision).await;
        if let Some(held) = held {
            match result {
                Ok(_) => held.commit(state).await,
                Err(_) => held.undo(state).await,
            }
        }
        match result {
            Ok(kv) => return decode_kv(def, &kv),
            Err(StoreError::Conflict { .. }) if precondition.is_none() => continue,
            Err(StoreError::Conflict { current: None, .. }) => {
                return Err(ApiError::not_found(def.plural, def.group, name))
            }
            Err(e) => return Err(from_store(e, def.plural, def.group, name)),
        }
    }
}

/// Pods on a node are deleted by their kubelet once it has stopped them; only then (or with
/// a zero grace period) does the object go.
pub(crate) fn is_graceful_pending(def: &ResourceDef, obj: &Value) -> bool {
    def.group.is_empty()
        && def.plural == "pods"
        && obj
            .pointer("/metadata/deletionGracePeriodSeconds")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_the_ones_the_typed_round_trip_drops() {
        let input = json!({"spec": {"replicaz": 3, "replicas": 1, "template": {"spec": {"containers": [{"name": "c", "imagee": "x"}]}}}, "metadata": {"labels": null}});
        let typed = json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "c"}]}}}, "metadata": {}});
        let mut out = Vec::new();
        unknown_fields(&input, &typed, "", &mut out);
        assert_eq!(
            out,
            ["spec.replicaz", "spec.template.spec.containers[0].imagee"]
        );
    }
}
