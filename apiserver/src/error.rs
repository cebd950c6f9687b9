//! Errors that stop the server from starting or serving (request errors are
//! [`crate::status::ApiError`], sent to the client as a `Status`).

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening storage")]
    Storage {
        #[source]
        source: store::StoreError,
    },
    #[error("{action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("generating TLS material: {reason}")]
    Tls { reason: String },
    #[error("binding {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid configuration: {reason}")]
    Config { reason: String },
    #[error("bootstrapping {what}: {reason}")]
    Bootstrap { what: String, reason: String },
}

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    }
}
