use std::path::PathBuf;

// aya's errors are large; boxed so every Result in the proxy stays small
/// Errors from loading, attaching and programming the eBPF dataplane.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("the dataplane eBPF object was not built into this binary; run `cargo xtask build-ebpf` and rebuild")]
    ObjectMissing,

    #[error("creating pin directory {path}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("loading the dataplane eBPF object with maps pinned under {pin_root}")]
    Load {
        pin_root: PathBuf,
        #[source]
        source: Box<aya::EbpfError>,
    },

    #[error("the eBPF object has no {kind} named {name}")]
    Missing {
        kind: &'static str,
        name: &'static str,
    },

    #[error("{what}")]
    Program {
        what: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },

    #[error("{what}")]
    Link {
        what: String,
        #[source]
        source: Box<aya::programs::links::LinkError>,
    },

    #[error("{what}")]
    Pin {
        what: String,
        #[source]
        source: Box<aya::pin::PinError>,
    },

    #[error("{what}")]
    Map {
        what: String,
        #[source]
        source: Box<aya::maps::MapError>,
    },

    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    #[error("service {service} has {count} backends, more than the {max} the dataplane allows")]
    TooManyBackends {
        service: String,
        count: usize,
        max: u16,
    },

    #[error("no free {what} id left")]
    IdsExhausted { what: &'static str },

    #[error("pinned maps under {pin_root} are inconsistent: {detail}")]
    Inconsistent { pin_root: PathBuf, detail: String },
}
