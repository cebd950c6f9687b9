//! Kubernetes' authorizer library (k8s.io/apiserver/pkg/cel/library `authz.go`) for
//! ValidatingAdmissionPolicies and webhook matchConditions: the `authorizer` variable
//! (`authorizer.group('apps').resource('deployments').namespace('ns').name('n')
//! .check('create').allowed()`, `authorizer.path('/healthz').check('get')`,
//! `authorizer.serviceAccount(ns, name)`), `authorizer.requestResource` (the request's own
//! resource) and the decision's `allowed()`, `reason()`, `errored()`, `error()`. Checks ask
//! the apiserver's authorizer (Node, then RBAC) as the request's user.

use std::sync::Arc;

use cel::common::types::{Type, STRING_TYPE};
use cel::{DeclarationError, Env, ExecutionError};

use super::library::{out, values, Args, Out};
use super::{CelValue, Var};
use crate::auth::UserInfo;
use crate::rbac::Attributes;

const AUTHORIZER: &str = "kubernetes.authorization.Authorizer";
const PATH_CHECK: &str = "kubernetes.authorization.PathCheck";
const GROUP_CHECK: &str = "kubernetes.authorization.GroupCheck";
const RESOURCE_CHECK: &str = "kubernetes.authorization.ResourceCheck";
const DECISION: &str = "kubernetes.authorization.Decision";

/// What answers the checks: (allowed, reason) for a user and attributes.
pub type Authorize = Arc<dyn Fn(&UserInfo, &Attributes) -> (bool, String) + Send + Sync>;

/// The user checks are made as, and who answers them.
#[derive(Clone)]
struct Who {
    user: Arc<UserInfo>,
    authorize: Authorize,
}

impl std::fmt::Debug for Who {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "authorizer for {}", self.user.name)
    }
}

impl PartialEq for Who {
    fn eq(&self, other: &Self) -> bool {
        self.user == other.user && Arc::ptr_eq(&self.authorize, &other.authorize)
    }
}

impl Eq for Who {}

#[derive(Debug, PartialEq, Eq)]
struct Authorizer(Who);

#[derive(Debug, PartialEq, Eq)]
struct PathCheck {
    who: Who,
    path: String,
}

#[derive(Debug, PartialEq, Eq)]
struct GroupCheck {
    who: Who,
    group: String,
}

#[derive(Debug, PartialEq, Eq, Clone)]
struct ResourceCheck {
    who: Who,
    group: String,
    resource: String,
    subresource: String,
    namespace: String,
    name: String,
}

#[derive(Debug, PartialEq, Eq)]
struct Decision {
    allowed: bool,
    reason: String,
}

macro_rules! opaque {
    ($($t:ty => $name:expr),*) => {
        $(impl cel::objects::Opaque for $t {
            fn runtime_type_name(&self) -> &str {
                $name
            }
        })*
    };
}

opaque!(Authorizer => AUTHORIZER, PathCheck => PATH_CHECK, GroupCheck => GROUP_CHECK,
    ResourceCheck => RESOURCE_CHECK, Decision => DECISION);

pub(super) fn register(env: &mut Env) -> Result<(), DeclarationError> {
    let t = Type::new_opaque_type;
    type F = cel::common::functions::Function;
    let s = || STRING_TYPE;
    let members: [(&str, &str, Type, Vec<Type>, F); 12] = [
        ("path", "authorizer_path", t(AUTHORIZER), vec![s()], path),
        ("group", "authorizer_group", t(AUTHORIZER), vec![s()], group),
        (
            "serviceAccount",
            "authorizer_serviceaccount",
            t(AUTHORIZER),
            vec![s(), s()],
            service_account,
        ),
        ("check", "pathcheck_check", t(PATH_CHECK), vec![s()], check),
        (
            "resource",
            "groupcheck_resource",
            t(GROUP_CHECK),
            vec![s()],
            resource,
        ),
        (
            "subresource",
            "resourcecheck_subresource",
            t(RESOURCE_CHECK),
            vec![s()],
            subresource,
        ),
        (
            "namespace",
            "resourcecheck_namespace",
            t(RESOURCE_CHECK),
            vec![s()],
            namespace,
        ),
        (
            "name",
            "resourcecheck_name",
            t(RESOURCE_CHECK),
            vec![s()],
            name,
        ),
        (
            "check",
            "resourcecheck_check",
            t(RESOURCE_CHECK),
            vec![s()],
            check,
        ),
        ("allowed", "decision_allowed", t(DECISION), vec![], allowed),
        ("reason", "decision_reason", t(DECISION), vec![], reason),
        ("errored", "decision_errored", t(DECISION), vec![], errored),
    ];
    for (name, id, target, args, f) in members {
        env.add_member_overload(name, id, target, args, f)?;
    }
    env.add_member_overload("error", "decision_error", t(DECISION), vec![], error)
}

/// The request's resource, for `authorizer.requestResource`.
pub struct RequestResource {
    pub group: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
}

/// The `authorizer` and `authorizer.requestResource` of one request.
#[derive(Debug)]
pub struct Authz {
    who: Who,
    request: ResourceCheck,
}

impl Authz {
    /// Checks as `user`, answered by `authorize`; `req` is the request's resource.
    pub fn new(user: UserInfo, authorize: Authorize, req: RequestResource) -> Authz {
        let who = Who {
            user: Arc::new(user),
            authorize,
        };
        let request = ResourceCheck {
            who: who.clone(),
            group: req.group,
            resource: req.resource,
            subresource: req.subresource,
            namespace: req.namespace,
            name: req.name,
        };
        Authz { who, request }
    }

    /// The two variables (`authorizer.requestResource` is one name to cel-rust: it
    /// resolves the longest dotted variable name first).
    pub fn variables(&self) -> Vec<Var<'static>> {
        let boxed = |v: CelValue| -> Option<Box<dyn cel::common::value::Val>> { v.try_into().ok() };
        let a = boxed(CelValue::Opaque(Arc::new(Authorizer(self.who.clone()))));
        let r = boxed(CelValue::Opaque(Arc::new(self.request.clone())));
        let mut out = Vec::new();
        out.extend(a.map(|a| ("authorizer", a)));
        out.extend(r.map(|r| ("authorizer.requestResource", r)));
        out
    }
}

fn no_overload(function: &str) -> ExecutionError {
    ExecutionError::no_such_overload(function, vec![])
}

/// The target as `T` and the string arguments.
fn target<T: Send + Sync + 'static, R>(
    args: &Args<'_, '_>,
    function: &str,
    f: impl FnOnce(&T, &[&str]) -> R,
) -> Result<R, ExecutionError> {
    let v = values(args)?;
    let strings: Vec<&str> = v[1..]
        .iter()
        .map(|a| match a {
            CelValue::String(s) => Ok(s.as_str()),
            _ => Err(no_overload(function)),
        })
        .collect::<Result<_, _>>()?;
    match v.first() {
        Some(CelValue::Opaque(o)) => match o.downcast_ref::<T>() {
            Some(t) => Ok(f(t, &strings)),
            None => Err(no_overload(function)),
        },
        _ => Err(no_overload(function)),
    }
}

fn opaque<'b, 'v>(v: impl cel::objects::Opaque) -> Out<'b, 'v> {
    out(CelValue::Opaque(Arc::new(v)))
}

fn path<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    opaque(target(&args, "path", |a: &Authorizer, s| PathCheck {
        who: a.0.clone(),
        path: s[0].to_string(),
    })?)
}

fn group<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    opaque(target(&args, "group", |a: &Authorizer, s| GroupCheck {
        who: a.0.clone(),
        group: s[0].to_string(),
    })?)
}

/// Upstream's service account user: `system:serviceaccount:<ns>:<name>` in the service
/// account groups.
fn service_account<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    opaque(target(&args, "serviceAccount", |a: &Authorizer, s| {
        let (ns, name) = (s[0], s[1]);
        Authorizer(Who {
            user: Arc::new(UserInfo {
                name: format!("system:serviceaccount:{ns}:{name}"),
                uid: String::new(),
                groups: vec![
                    "system:serviceaccounts".into(),
                    format!("system:serviceaccounts:{ns}"),
                    "system:authenticated".into(),
                ],
                extra: Default::default(),
            }),
            authorize: a.0.authorize.clone(),
        })
    })?)
}

fn resource<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    opaque(target(&args, "resource", |g: &GroupCheck, s| {
        ResourceCheck {
            who: g.who.clone(),
            group: g.group.clone(),
            resource: s[0].to_string(),
            subresource: String::new(),
            namespace: String::new(),
            name: String::new(),
        }
    })?)
}

fn with_resource<'b, 'v>(
    args: Args<'b, 'v>,
    function: &str,
    set: impl FnOnce(&mut ResourceCheck, &str),
) -> Out<'b, 'v> {
    opaque(target(&args, function, |r: &ResourceCheck, s| {
        let mut r = r.clone();
        set(&mut r, s[0]);
        r
    })?)
}

fn subresource<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    with_resource(args, "subresource", |r, s| r.subresource = s.into())
}

fn namespace<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    with_resource(args, "namespace", |r, s| r.namespace = s.into())
}

fn name<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    with_resource(args, "name", |r, s| r.name = s.into())
}

fn decide(who: &Who, attrs: Attributes) -> Decision {
    let (allowed, reason) = (who.authorize)(&who.user, &attrs);
    Decision { allowed, reason }
}

fn check<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    if let Ok(d) = target(&args, "check", |p: &PathCheck, s| {
        decide(
            &p.who,
            Attributes::NonResource {
                verb: s[0].to_string(),
                path: p.path.clone(),
            },
        )
    }) {
        return opaque(d);
    }
    opaque(target(&args, "check", |r: &ResourceCheck, s| {
        let resource = match r.subresource.as_str() {
            "" => r.resource.clone(),
            sub => format!("{}/{sub}", r.resource),
        };
        let some = |x: &str| (!x.is_empty()).then(|| x.to_string());
        decide(
            &r.who,
            Attributes::Resource {
                verb: s[0].to_string(),
                group: r.group.clone(),
                resource,
                namespace: some(&r.namespace),
                name: some(&r.name),
                field_selector: None,
            },
        )
    })?)
}

fn decision<'b, 'v>(
    args: Args<'b, 'v>,
    function: &str,
    f: impl FnOnce(&Decision) -> CelValue,
) -> Out<'b, 'v> {
    out(target(&args, function, |d: &Decision, _| f(d))?)
}

fn allowed<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    decision(args, "allowed", |d| CelValue::Bool(d.allowed))
}

fn reason<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    decision(args, "reason", |d| CelValue::from(d.reason.clone()))
}

/// kaze's authorizers answer from memory and never fail.
fn errored<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    decision(args, "errored", |_| CelValue::Bool(false))
}

fn error<'b, 'v>(args: Args<'b, 'v>) -> Out<'b, 'v> {
    decision(args, "error", |_| CelValue::from(String::new()))
}
