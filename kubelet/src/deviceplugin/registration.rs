//! What the registration socket checks and does to its dir (upstream's `Register`
//! validation and `CleanupPluginDirectory`).

use std::path::Path;

use super::{checkpoint, proto, KUBELET_SOCKET};

/// Upstream's `IsExtendedResourceName`: domain-qualified, outside `kubernetes.io/`, and a
/// qualified name once prefixed with `requests.` (as quota names it).
pub fn is_extended_resource_name(name: &str) -> bool {
    if !name.contains('/') || name.contains("kubernetes.io/") || name.starts_with("requests.") {
        return false;
    }
    let quota = format!("requests.{name}");
    let Some((prefix, rest)) = quota.split_once('/') else {
        return false;
    };
    let label = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
    };
    let b = rest.as_bytes();
    prefix.len() <= 253
        && prefix.split('.').all(label)
        && !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Check a registration as upstream's `Register` does (and, a kaze check, that the
/// endpoint is a socket name in the device plugin dir); the error is the gRPC answer's.
pub fn validate(req: &proto::RegisterRequest) -> Result<(), String> {
    if req.version != proto::VERSION {
        return Err(format!(
            "requested API version {:?} is not supported by kubelet. Supported version is [{:?}]",
            req.version,
            proto::VERSION
        ));
    }
    if !is_extended_resource_name(&req.resource_name) {
        return Err(format!(
            "the ResourceName {:?} is invalid",
            req.resource_name
        ));
    }
    let e = req.endpoint.as_str();
    if e.is_empty() || e.contains('/') || e == "." || e == ".." || e == KUBELET_SOCKET {
        return Err(format!(
            "the endpoint {e:?} is not the name of a socket in the device plugin directory"
        ));
    }
    Ok(())
}

pub(super) fn create_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
}

/// Upstream's `CleanupPluginDirectory`: every socket in `dir` goes (plugins see the new
/// `kubelet.sock` and register again); files and dirs stay.
pub(super) fn remove_sockets(dir: &Path) {
    use std::os::unix::fs::FileTypeExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.file_name().and_then(|n| n.to_str()) == Some(checkpoint::FILE) {
            continue;
        }
        if std::fs::metadata(&path).is_ok_and(|m| m.file_type().is_socket()) {
            if let Err(err) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %err, "removing a device plugin socket");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: &str, resource: &str, endpoint: &str) -> proto::RegisterRequest {
        proto::RegisterRequest {
            version: version.into(),
            endpoint: endpoint.into(),
            resource_name: resource.into(),
            options: None,
        }
    }

    #[test]
    fn registrations_are_checked_as_upstream_does() {
        assert_eq!(
            validate(&req("v1beta1", "nvidia.com/gpu", "gpu.sock")),
            Ok(())
        );
        assert_eq!(
            validate(&req("v1alpha", "nvidia.com/gpu", "gpu.sock")),
            Err("requested API version \"v1alpha\" is not supported by kubelet. Supported version is [\"v1beta1\"]".into())
        );
        for bad in [
            "gpu",
            "kubernetes.io/gpu",
            "example.kubernetes.io/gpu",
            "requests.example.com/gpu",
            "Example.com/gpu",
            "example.com/",
            "example.com/-gpu",
            "example.com/a/b",
        ] {
            assert_eq!(
                validate(&req("v1beta1", bad, "gpu.sock")),
                Err(format!("the ResourceName {bad:?} is invalid")),
                "{bad}"
            );
        }
        assert!(is_extended_resource_name("example.com/Gpu_1.x"));
        for bad in ["", "../x.sock", "a/b.sock", "..", "kubelet.sock"] {
            assert!(
                validate(&req("v1beta1", "example.com/gpu", bad)).is_err(),
                "{bad}"
            );
        }
    }
}
