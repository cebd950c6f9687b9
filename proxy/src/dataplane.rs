//! Loading the eBPF object, pinning its maps and attaching its programs.

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::{
    programs::{
        links::{FdLink, LinkError, PinnedLink},
        tc::SchedClassifierLink,
        tc::{self, TcAttachOptions},
        xdp::XdpLink,
        CgroupAttachMode, CgroupSockAddr, LinkOrder, ProgramError, SchedClassifier, TcAttachType,
        Xdp,
    },
    sys::SyscallError,
    Ebpf, EbpfLoader,
};
use dataplane_common::{names, programs};
use tracing::{info, warn};

use crate::{error::DataplaneError, services::State};

/// Where maps and links are pinned unless configured otherwise.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/kaze";

/// The object built by `cargo xtask build-ebpf`, embedded at compile time (see build.rs).
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("KAZE_DATAPLANE_OBJECT"));

/// How the dataplane is loaded.
/// The kernel's default `nf_conntrack_udp_timeout`.
pub const DEFAULT_UDP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct DataplaneConfig {
    /// Directory on bpffs holding the pinned maps (`<root>/<MAP>`) and links
    /// (`<root>/links/...`). Tests use a unique root each.
    pub pin_root: PathBuf,
    /// Overrides the conntrack map size (entries); a pinned map keeps the size it was
    /// created with.
    pub conntrack_max: Option<u32>,
    /// Object to load instead of the embedded one.
    pub object: Option<PathBuf>,
    /// Kernel-side aya-log records up to this level are emitted; `None` (the default)
    /// turns them off in the programs themselves, so they cost one load and a branch.
    /// Read them with [`Dataplane::kernel_logger`].
    pub kernel_log: Option<aya_log::Level>,
    /// How long an idle UDP flow keeps its backend (a later datagram on the same tuple is
    /// a new flow).
    pub udp_timeout: std::time::Duration,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            pin_root: PathBuf::from(DEFAULT_PIN_ROOT),
            conntrack_max: None,
            object: None,
            kernel_log: None,
            udp_timeout: DEFAULT_UDP_TIMEOUT,
        }
    }
}

/// Which tc hook of an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TcHook {
    Ingress,
    Egress,
}

impl TcHook {
    fn name(self) -> &'static str {
        match self {
            TcHook::Ingress => "ingress",
            TcHook::Egress => "egress",
        }
    }

    fn attach_type(self) -> TcAttachType {
        match self {
            TcHook::Ingress => TcAttachType::Ingress,
            TcHook::Egress => TcAttachType::Egress,
        }
    }
}

/// The loaded dataplane: programs, pinned maps, and the proxy's view of what is programmed.
pub struct Dataplane {
    pub(crate) ebpf: Ebpf,
    pub(crate) pin_root: PathBuf,
    pub(crate) state: State,
    /// Whether the socket programs loaded (see `attach_cgroup`).
    sock_loaded: bool,
}

impl Dataplane {
    /// Loads the programs and opens the maps pinned under `config.pin_root`, creating and
    /// pinning any that do not exist yet. Existing pins are reused as they are, never flushed:
    /// the services and flows programmed by a previous run stay in force.
    pub fn load(config: &DataplaneConfig) -> Result<Self, DataplaneError> {
        let pin_root = config.pin_root.clone();
        std::fs::create_dir_all(pin_root.join("links")).map_err(|source| {
            DataplaneError::PinDir {
                path: pin_root.clone(),
                source,
            }
        })?;

        let owned;
        let bytes: &[u8] = match &config.object {
            Some(path) => {
                owned = std::fs::read(path).map_err(|source| DataplaneError::Io {
                    what: format!("reading eBPF object {}", path.display()),
                    source,
                })?;
                &owned
            }
            None => OBJECT,
        };
        if bytes.is_empty() {
            return Err(DataplaneError::ObjectMissing);
        }

        let pins: Vec<(&'static str, PathBuf)> = names::ALL
            .iter()
            .map(|name| (*name, pin_root.join(name)))
            .collect();
        let mut loader = EbpfLoader::new();
        for (name, path) in &pins {
            loader.map_pin_path(name, path.as_path());
        }
        if let Some(max) = config.conntrack_max {
            loader.map_max_entries(names::CONNTRACK4, max);
        }
        // 0 is below every level: aya-log statements in the programs do nothing
        let log_level: u8 = config.kernel_log.map_or(0, |l| l as u8);
        loader.override_global(aya_log::LEVEL, &log_level, true);
        let udp_timeout_ns = u64::try_from(config.udp_timeout.as_nanos()).unwrap_or(u64::MAX);
        loader.override_global("KAZE_UDP_TIMEOUT_NS", &udp_timeout_ns, true);
        // The socket programs only touch sockets of this (the node's) network namespace.
        let netns_cookie = crate::sys::netns_cookie().unwrap_or_else(|e| {
            warn!(error = %e, "no network namespace cookie (kernel < 5.14?): the node's own processes cannot reach Services in eBPF mode");
            0
        });
        loader.override_global("KAZE_SOCK_NETNS", &netns_cookie, true);
        let mut ebpf = loader.load(bytes).map_err(|source| DataplaneError::Load {
            pin_root: pin_root.clone(),
            source: Box::new(source),
        })?;

        program_mut::<SchedClassifier>(&mut ebpf, programs::TC)?
            .load()
            .map_err(|source| DataplaneError::Program {
                what: format!("loading program {}", programs::TC),
                source: Box::new(source),
            })?;
        program_mut::<Xdp>(&mut ebpf, programs::XDP)?
            .load()
            .map_err(|source| DataplaneError::Program {
                what: format!("loading program {}", programs::XDP),
                source: Box::new(source),
            })?;

        // Rebuilding from the maps both validates their layouts (typed map handles check key
        // and value sizes) and recovers the ids a previous run allocated.
        // Socket-level balancing is an addition: a kernel refusing it leaves pods' Services
        // working, so it is reported, not fatal.
        let mut sock_loaded = netns_cookie != 0;
        for name in programs::SOCK {
            if !sock_loaded {
                break;
            }
            if let Err(e) = program_mut::<CgroupSockAddr>(&mut ebpf, name)?.load() {
                warn!(program = name, error = %crate::engine::chain(&e), "loading a socket program failed: the node's own processes cannot reach Services in eBPF mode");
                sock_loaded = false;
            }
        }

        let state = State::read(&ebpf, &pin_root)?;
        info!(
            pin_root = %pin_root.display(),
            services = state.service_count(),
            "dataplane loaded"
        );
        Ok(Self {
            ebpf,
            pin_root,
            state,
            sock_loaded,
        })
    }

    /// Starts forwarding the programs' aya-log records (enabled by
    /// [`DataplaneConfig::kernel_log`]) to `logger`. The caller drains them with
    /// [`aya_log::EbpfLogger::flush`], e.g. when its fd becomes readable. Only one logger can
    /// be taken.
    pub fn kernel_logger<T: log::Log>(
        &mut self,
        logger: T,
    ) -> Result<aya_log::EbpfLogger<T>, DataplaneError> {
        aya_log::EbpfLogger::init_with_logger(&mut self.ebpf, logger).map_err(|source| {
            DataplaneError::Io {
                what: "reading the programs' log ring buffer".into(),
                source: io::Error::other(source),
            }
        })
    }

    /// The pin root this dataplane uses.
    pub fn pin_root(&self) -> &Path {
        &self.pin_root
    }

    /// Attaches the tc program to `iface` at `hook` (tcx). The link is pinned, so it stays
    /// attached when this process exits; if a link pinned by a previous run exists, its
    /// program is swapped for this one atomically, so no packet goes unhandled in between.
    pub fn attach_tc(&mut self, iface: &str, hook: TcHook) -> Result<(), DataplaneError> {
        // tcx does not need the qdisc, but the netlink fallback on older kernels does, and
        // tc tooling expects it; an existing qdisc is fine.
        match tc::qdisc_add_clsact(iface) {
            Ok(()) => {}
            Err(tc::TcError::AlreadyAttached) => {}
            Err(tc::TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc_eexist()) => {}
            Err(e) => {
                return Err(DataplaneError::Io {
                    what: format!("adding clsact qdisc to {iface}"),
                    source: io::Error::other(e),
                })
            }
        }
        let pin = self.link_pin(&format!("tc-{iface}-{}", hook.name()));
        let prog = program_mut::<SchedClassifier>(&mut self.ebpf, programs::TC)?;
        let what = || format!("attaching {} to {iface} {}", programs::TC, hook.name());
        let id = match open_pinned_link(&pin).map_err(link_error(&what))? {
            Some(old) => {
                // The interface may have been deleted and re-created since the link was
                // pinned; a link that cannot take the new program is stale and replaced.
                let replaced = SchedClassifierLink::try_from(old)
                    .ok()
                    .and_then(|link| prog.attach_to_link(link).ok());
                match replaced {
                    Some(id) => Ok(id),
                    None => {
                        remove_stale_pin(&pin)?;
                        prog.attach_with_options(
                            iface,
                            hook.attach_type(),
                            TcAttachOptions::TcxOrder(LinkOrder::default()),
                        )
                    }
                }
            }
            None => prog.attach_with_options(
                iface,
                hook.attach_type(),
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            ),
        }
        .map_err(program_error(&what))?;
        pin_link(fd_link(prog.take_link(id), &what)?, &pin)
    }

    /// Detaches the tc program from `iface` at `hook` and removes the link's pin.
    pub fn detach_tc(&mut self, iface: &str, hook: TcHook) -> Result<(), DataplaneError> {
        self.unpin_link(&format!("tc-{iface}-{}", hook.name()))
    }

    /// Attaches the XDP program to `iface` in generic (skb) mode, which works on every
    /// device including veth. Pinned and replaced across restarts like [`Self::attach_tc`].
    pub fn attach_xdp(&mut self, iface: &str) -> Result<(), DataplaneError> {
        let pin = self.link_pin(&format!("xdp-{iface}"));
        let prog = program_mut::<Xdp>(&mut self.ebpf, programs::XDP)?;
        let what = || format!("attaching {} to {iface}", programs::XDP);
        let id = match open_pinned_link(&pin).map_err(link_error(&what))? {
            Some(old) => {
                // as for tc: a stale link (interface re-created) is replaced
                let replaced = XdpLink::try_from(old)
                    .ok()
                    .and_then(|link| prog.attach_to_link(link).ok());
                match replaced {
                    Some(id) => Ok(id),
                    None => {
                        remove_stale_pin(&pin)?;
                        prog.attach(iface, aya::programs::xdp::XdpMode::Skb)
                    }
                }
            }
            None => prog.attach(iface, aya::programs::xdp::XdpMode::Skb),
        }
        .map_err(program_error(&what))?;
        pin_link(fd_link(prog.take_link(id), &what)?, &pin)
    }

    /// Attaches the socket programs to the cgroup v2 directory `cgroup` (as bpf links, which
    /// coexist with other programs there; kernel 5.7+). Returns the names of their link pins, or an empty list when
    /// the programs did not load. A previous run's links are replaced without a gap: the new
    /// program is attached before the old link's pin goes.
    pub fn attach_cgroup(&mut self, cgroup: &Path) -> Result<Vec<String>, DataplaneError> {
        if !self.sock_loaded {
            return Ok(Vec::new());
        }
        let dir = std::fs::File::open(cgroup).map_err(|source| DataplaneError::Io {
            what: format!("opening cgroup {}", cgroup.display()),
            source,
        })?;
        let mut pins = Vec::new();
        for name in programs::SOCK {
            let pin_name = format!("cgroup-{name}");
            let pin = self.link_pin(&pin_name);
            let what = || format!("attaching {name} to cgroup {}", cgroup.display());
            let old = open_pinned_link(&pin).map_err(link_error(&what))?;
            let prog = program_mut::<CgroupSockAddr>(&mut self.ebpf, name)?;
            // `Single` is flags 0, which is what bpf_link_create takes: a cgroup *link*
            // always coexists with other programs on the cgroup (any flag is EINVAL)
            let id = prog
                .attach(&dir, CgroupAttachMode::Single)
                .map_err(program_error(&what))?;
            let fd = fd_link(prog.take_link(id), &what)?;
            if old.is_some() {
                // the old link detaches once this pin and the `old` fd are both gone
                remove_stale_pin(&pin)?;
            }
            drop(old);
            pin_link(fd, &pin)?;
            pins.push(pin_name);
        }
        Ok(pins)
    }

    /// Detaches the XDP program from `iface` and removes the link's pin.
    pub fn detach_xdp(&mut self, iface: &str) -> Result<(), DataplaneError> {
        self.unpin_link(&format!("xdp-{iface}"))
    }

    /// The loaded tc program, e.g. for `BPF_PROG_TEST_RUN` through [`aya::programs::TestRun`].
    pub fn tc_program(&self) -> Result<&SchedClassifier, DataplaneError> {
        program::<SchedClassifier>(&self.ebpf, programs::TC)
    }

    /// The loaded XDP program.
    pub fn xdp_program(&self) -> Result<&Xdp, DataplaneError> {
        program::<Xdp>(&self.ebpf, programs::XDP)
    }

    fn link_pin(&self, name: &str) -> PathBuf {
        self.pin_root.join("links").join(name)
    }

    fn unpin_link(&self, name: &str) -> Result<(), DataplaneError> {
        let pin = self.link_pin(name);
        match std::fs::remove_file(&pin) {
            // the link detaches once its last reference (pin or fd) is gone
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(DataplaneError::Io {
                what: format!("removing link pin {}", pin.display()),
                source,
            }),
        }
    }
}

fn libc_eexist() -> i32 {
    // EEXIST is 17 on every Linux architecture
    17
}

/// Opens a link pinned at `path`, or `None` if nothing is pinned there.
fn open_pinned_link(path: &Path) -> Result<Option<FdLink>, LinkError> {
    match PinnedLink::from_pin(path) {
        Ok(pinned) => Ok(Some(FdLink::from(pinned))),
        Err(LinkError::SyscallError(SyscallError { io_error, .. }))
            if io_error.kind() == io::ErrorKind::NotFound =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

fn remove_stale_pin(path: &Path) -> Result<(), DataplaneError> {
    std::fs::remove_file(path).map_err(|source| DataplaneError::Io {
        what: format!("removing stale link pin {}", path.display()),
        source,
    })
}

/// Wraps a program error with what was being done.
fn program_error(what: &impl Fn() -> String) -> impl FnOnce(ProgramError) -> DataplaneError + '_ {
    move |source| DataplaneError::Program {
        what: what(),
        source: Box::new(source),
    }
}

/// Wraps a link error with what was being done.
fn link_error(what: &impl Fn() -> String) -> impl FnOnce(LinkError) -> DataplaneError + '_ {
    move |source| DataplaneError::Link {
        what: what(),
        source: Box::new(source),
    }
}

/// The link a program handed over (`take_link`) as an fd link, which can be pinned: the
/// program's own bookkeeping would detach it when the program is dropped.
fn fd_link<L: TryInto<FdLink, Error = LinkError>>(
    taken: Result<L, ProgramError>,
    what: &impl Fn() -> String,
) -> Result<FdLink, DataplaneError> {
    taken
        .map_err(program_error(what))?
        .try_into()
        .map_err(link_error(what))
}

/// Pins `link` at `path` unless it is already pinned there (a replaced link keeps its pin).
fn pin_link(link: FdLink, path: &Path) -> Result<(), DataplaneError> {
    if path.exists() {
        return Ok(());
    }
    link.pin(path).map_err(|source| DataplaneError::Pin {
        what: format!("pinning link at {}", path.display()),
        source: Box::new(source),
    })?;
    Ok(())
}

fn program<'a, T>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a T, DataplaneError>
where
    &'a T: TryFrom<&'a aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf.program(name).ok_or(DataplaneError::Missing {
        kind: "program",
        name,
    })?;
    p.try_into().map_err(|source| DataplaneError::Program {
        what: format!("using program {name}"),
        source: Box::new(source),
    })
}

fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, DataplaneError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf.program_mut(name).ok_or(DataplaneError::Missing {
        kind: "program",
        name,
    })?;
    p.try_into().map_err(|source| DataplaneError::Program {
        what: format!("using program {name}"),
        source: Box::new(source),
    })
}
