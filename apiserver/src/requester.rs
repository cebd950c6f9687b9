//! Who makes the request being handled, for the layers below the router that need it
//! (upstream passes it in the request context): the CertificateSigningRequest strategy
//! stamps the requester into `spec.username/uid/groups/extra`, NodeRestriction admission
//! limits what nodes may write. Requests made by the apiserver itself (its controllers)
//! run without one.

use std::future::Future;

use crate::auth::UserInfo;

tokio::task_local! {
    static USER: UserInfo;
}

/// Handle a request made by `user`.
pub async fn scope<F: Future>(user: UserInfo, f: F) -> F::Output {
    USER.scope(user, f).await
}

/// The user of the request being handled; None inside the apiserver's own work.
pub fn current() -> Option<UserInfo> {
    USER.try_with(Clone::clone).ok()
}
