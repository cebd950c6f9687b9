//! The kubelet's errors: each says what was being done, then why.

use std::path::PathBuf;

use crate::sys::SysError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to containerd at {address}: {source}")]
    Connect {
        address: PathBuf,
        #[source]
        source: containerd_client::tonic::transport::Error,
    },
    #[error("{what}: containerd: {}", source.message())]
    Containerd {
        what: String,
        #[source]
        source: Box<containerd_client::tonic::Status>,
    },
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: Box<SysError>,
    },
    #[error(
        "image {image} is not present in containerd namespace {namespace} and no registry is \
         configured (import it with `kaze images import FILE` or put its tarball in \
         <root-dir>/agent/images/)"
    )]
    ImageNotPresent { image: String, namespace: String },
    #[error("importing image tarball {path}: {reason}")]
    BadImage { path: PathBuf, reason: String },
    #[error("{what}: cni {plugin} {command} failed: {message}")]
    Cni {
        what: String,
        plugin: String,
        command: &'static str,
        message: String,
    },
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
}

impl Error {
    /// Whether this is the "image not present, no registry" case, which a pod reports as
    /// ErrImagePull rather than as a runtime failure.
    pub fn is_image_not_present(&self) -> bool {
        matches!(self, Error::ImageNotPresent { .. })
    }

    pub(crate) fn containerd(
        what: impl Into<String>,
        source: containerd_client::tonic::Status,
    ) -> Error {
        Error::Containerd {
            what: what.into(),
            source: Box::new(source),
        }
    }

    pub(crate) fn sys(what: impl Into<String>, source: SysError) -> Error {
        Error::Sys {
            what: what.into(),
            source: Box::new(source),
        }
    }

    pub(crate) fn invalid(what: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Invalid {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

/// Attach "what was being done" to a containerd or host error.
pub(crate) trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, Error>;
}

impl<T> Context<T> for Result<T, containerd_client::tonic::Status> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|source| Error::containerd(what(), source))
    }
}

impl<T> Context<T> for Result<T, SysError> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|source| Error::sys(what(), source))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
