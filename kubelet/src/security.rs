//! A container's `securityContext`, as upstream's kubelet and containerd's CRI plugin turn it
//! into an OCI process. Pure functions of their inputs (the host's side, every capability
//! and the per-CPU masked paths, comes in as [`HostSecurity`]):
//! - [`SecurityContext::effective`]: the pod-level fields overlaid with the container's
//!   (upstream's `DetermineEffectiveSecurityContext`); `fsGroup` and `supplementalGroups`
//!   become supplementary groups, fsGroup first.
//! - [`verify_run_as_non_root`]: `runAsNonRoot` against the user the container would run as
//!   (upstream's messages; the pod reports them as `CreateContainerConfigError`).
//! - [`user_request`] + [`resolve_user`]: the user string the CRI plugin builds (runAsUser, or
//!   the image's user, and `:runAsGroup`) resolved as containerd's `WithUser` does against the
//!   image's /etc/passwd and /etc/group: a uid without a group takes its passwd entry's group
//!   (or 0); supplementary groups are the primary group, the user's groups in /etc/group
//!   (not with `supplementalGroupsPolicy: Strict`) and the pod's, sorted and deduplicated.
//! - [`capabilities`]: containerd's default set with `add`/`drop` applied in the CRI plugin's
//!   order (`ALL` first, then single names; a name in both is dropped); privileged containers
//!   get every capability the runtime has.
//! - [`oci_security`]: the rest: `allowPrivilegeEscalation: false` = no_new_privs (unset is
//!   false, as upstream), readOnlyRootFilesystem, upstream's masked and read-only /proc and
//!   /sys paths (none with `procMount: Unmasked` or privileged).

use k8s_openapi::api::core::v1::{Container, Pod};

/// containerd's default capability set for non-privileged containers.
pub const DEFAULT_CAPS: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Linux capabilities by number (0 to CAP_LAST_CAP, 40 since Linux 5.9).
pub const CAP_NAMES: [&str; 41] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// Upstream's default masked paths (kept in sync with moby's); the host adds each CPU's
/// `thermal_throttle` dir ([`HostSecurity::extra_masked`]).
pub const DEFAULT_MASKED_PATHS: [&str; 12] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Upstream's default read-only paths.
pub const DEFAULT_READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// What the host contributes: read once when the runtime starts.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostSecurity {
    /// Every capability containers may get (the runtime's bounding set): `add: [ALL]` and
    /// privileged containers.
    pub all_caps: Vec<String>,
    /// Masked paths that depend on the host (`/sys/devices/system/cpu/cpu<N>/thermal_throttle`).
    pub extra_masked: Vec<String>,
}

/// A container's effective security settings (pod level overlaid with container level).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SecurityContext {
    pub run_as_user: Option<i64>,
    pub run_as_group: Option<i64>,
    pub run_as_non_root: bool,
    /// `fsGroup`, then `supplementalGroups`, as the kubelet hands them to the runtime.
    pub supplemental_groups: Vec<i64>,
    /// `supplementalGroupsPolicy: Strict`: the image's /etc/group is not consulted.
    pub strict_groups: bool,
    pub read_only_root: bool,
    pub privileged: bool,
    /// `capabilities.add`/`drop`, upper case without the `CAP_` prefix.
    pub add_caps: Vec<String>,
    pub drop_caps: Vec<String>,
    /// `allowPrivilegeEscalation: false`.
    pub no_new_privileges: bool,
    /// `procMount: Unmasked`.
    pub unmasked_proc: bool,
    /// `seccompProfile` (the container's, else the pod's).
    pub seccomp: Seccomp,
}

/// A container's seccomp profile, as `seccompProfile.type` says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Seccomp {
    /// No filter (upstream's default without `--seccomp-default`).
    #[default]
    Unconfined,
    /// The runtime's default profile: [`runtime_default_seccomp`].
    RuntimeDefault,
    /// A profile file under `<root-dir>/seccomp/`.
    Localhost(String),
}

mod syscalls;

/// Syscalls kaze's `RuntimeDefault` profile leaves out of its allow-list (so they fail with
/// EPERM), unless the container holds the capability that makes each one legitimate: the
/// set Docker's default profile documents as blocked (kernel keyrings, modules, clocks,
/// mounts and namespaces, tracing, swapping, rebooting, obsolete calls), the new mount API,
/// and io_uring (which containerd's and Docker's profiles dropped in 2023). `clone`,
/// `clone3` and `personality` are allowed with conditions ([`runtime_default_seccomp`]).
const BLOCKED_SYSCALLS: &[(&str, Option<&str>)] = &[
    ("acct", Some("SYS_PACCT")),
    ("add_key", None),
    ("bpf", Some("SYS_ADMIN")),
    ("clock_adjtime", Some("SYS_TIME")),
    ("clock_settime", Some("SYS_TIME")),
    ("settimeofday", Some("SYS_TIME")),
    ("stime", Some("SYS_TIME")),
    ("adjtimex", Some("SYS_TIME")),
    ("create_module", Some("SYS_MODULE")),
    ("delete_module", Some("SYS_MODULE")),
    ("finit_module", Some("SYS_MODULE")),
    ("init_module", Some("SYS_MODULE")),
    ("get_kernel_syms", None),
    ("query_module", None),
    ("get_mempolicy", Some("SYS_NICE")),
    ("mbind", Some("SYS_NICE")),
    ("set_mempolicy", Some("SYS_NICE")),
    ("set_mempolicy_home_node", Some("SYS_NICE")),
    ("move_pages", Some("SYS_NICE")),
    ("ioperm", Some("SYS_RAWIO")),
    ("iopl", Some("SYS_RAWIO")),
    ("kcmp", Some("SYS_PTRACE")),
    ("ptrace", Some("SYS_PTRACE")),
    ("process_vm_readv", Some("SYS_PTRACE")),
    ("process_vm_writev", Some("SYS_PTRACE")),
    ("pidfd_getfd", Some("SYS_PTRACE")),
    ("kexec_file_load", Some("SYS_BOOT")),
    ("kexec_load", Some("SYS_BOOT")),
    ("reboot", Some("SYS_BOOT")),
    ("keyctl", None),
    ("request_key", None),
    ("lookup_dcookie", Some("SYS_ADMIN")),
    ("mount", Some("SYS_ADMIN")),
    ("umount", Some("SYS_ADMIN")),
    ("umount2", Some("SYS_ADMIN")),
    ("pivot_root", Some("SYS_ADMIN")),
    ("fsopen", Some("SYS_ADMIN")),
    ("fsconfig", Some("SYS_ADMIN")),
    ("fsmount", Some("SYS_ADMIN")),
    ("fspick", Some("SYS_ADMIN")),
    ("move_mount", Some("SYS_ADMIN")),
    ("open_tree", Some("SYS_ADMIN")),
    ("mount_setattr", Some("SYS_ADMIN")),
    ("unshare", Some("SYS_ADMIN")),
    ("setns", Some("SYS_ADMIN")),
    ("swapon", Some("SYS_ADMIN")),
    ("swapoff", Some("SYS_ADMIN")),
    ("quotactl", Some("SYS_ADMIN")),
    ("quotactl_fd", Some("SYS_ADMIN")),
    ("name_to_handle_at", Some("SYS_ADMIN")),
    ("open_by_handle_at", Some("DAC_READ_SEARCH")),
    ("perf_event_open", Some("SYS_ADMIN")),
    ("fanotify_init", Some("SYS_ADMIN")),
    ("syslog", Some("SYSLOG")),
    ("vhangup", Some("SYS_TTY_CONFIG")),
    ("chroot", Some("SYS_CHROOT")),
    ("io_uring_setup", None),
    ("io_uring_enter", None),
    ("io_uring_register", None),
    ("nfsservctl", None),
    ("sysfs", None),
    ("_sysctl", None),
    ("uselib", None),
    ("userfaultfd", None),
    ("ustat", None),
    ("vm86", None),
    ("vm86old", None),
];

/// `clone` flags that create namespaces (NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER,
/// NEWPID, NEWNET): without CAP_SYS_ADMIN a `clone` passing any of them is refused, as
/// `unshare` is.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;

/// The `personality(2)` values a container may set: `PER_LINUX` (0), `PER_LINUX32` (8),
/// either with `UNAME26` (0x20000), and the query (0xffffffff). Others (such as
/// `ADDR_NO_RANDOMIZE`) turn hardening off.
const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// kaze's `RuntimeDefault` seccomp profile for a container holding `caps` (capability names
/// without `CAP_`), an allow-list as containerd's CRI profile is: every syscall of
/// [`syscalls`]'s tables except [`BLOCKED_SYSCALLS`] not permitted by a held capability;
/// `clone` only without namespace flags and `clone3` answered ENOSYS (libc then falls back
/// to `clone`, whose flags the filter can see) unless CAP_SYS_ADMIN is held; `personality`
/// with the values of [`PERSONALITIES`]. Anything else fails with EPERM; runc answers
/// syscalls newer than the tables with ENOSYS.
pub fn runtime_default_seccomp(caps: &[String]) -> serde_json::Value {
    use serde_json::json;
    let holds = |c: &str| caps.iter().any(|h| h == c || h == &format!("CAP_{c}"));
    let blocked = |name: &str| {
        BLOCKED_SYSCALLS
            .iter()
            .any(|(n, cap)| *n == name && cap.is_none_or(|c| !holds(c)))
    };
    let special = ["clone", "clone3", "personality"];
    let allowed: Vec<&str> = syscalls::X86_64
        .iter()
        .chain(syscalls::X86_ONLY)
        .copied()
        .filter(|n| !blocked(n) && !special.contains(n))
        .collect();
    let architectures: &[&str] = match std::env::consts::ARCH {
        "x86_64" => &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "aarch64" => &["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        _ => &[],
    };
    let mut rules = vec![json!({"names": allowed, "action": "SCMP_ACT_ALLOW"})];
    for p in PERSONALITIES {
        rules.push(json!({"names": ["personality"], "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": p, "op": "SCMP_CMP_EQ"}]}));
    }
    if holds("SYS_ADMIN") {
        rules.push(json!({"names": ["clone", "clone3"], "action": "SCMP_ACT_ALLOW"}));
    } else {
        // clone's flags are its first argument on x86 and arm (the second on s390)
        rules.push(json!({"names": ["clone"], "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0,
                      "op": "SCMP_CMP_MASKED_EQ"}]}));
        // its flags are behind a pointer a filter cannot read: ENOSYS makes libc use clone
        rules.push(json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}));
    }
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": architectures,
        "syscalls": rules,
    })
}

fn cap_name(c: &str) -> String {
    let up = c.trim().to_uppercase();
    up.strip_prefix("CAP_").map(str::to_string).unwrap_or(up)
}

impl SecurityContext {
    /// Upstream's `DetermineEffectiveSecurityContext` plus the pod-level groups: the
    /// container's fields win; capabilities, privileged, readOnlyRootFilesystem,
    /// allowPrivilegeEscalation and procMount exist at the container level only.
    pub fn effective(pod: &Pod, c: &Container) -> SecurityContext {
        let psc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
        let csc = c.security_context.as_ref();
        let mut groups: Vec<i64> = psc.and_then(|p| p.fs_group).into_iter().collect();
        groups.extend(
            psc.and_then(|p| p.supplemental_groups.clone())
                .unwrap_or_default(),
        );
        let caps = csc.and_then(|c| c.capabilities.as_ref());
        let names =
            |v: Option<&Vec<String>>| v.into_iter().flatten().map(|s| cap_name(s)).collect();
        SecurityContext {
            run_as_user: csc
                .and_then(|c| c.run_as_user)
                .or(psc.and_then(|p| p.run_as_user)),
            run_as_group: csc
                .and_then(|c| c.run_as_group)
                .or(psc.and_then(|p| p.run_as_group)),
            run_as_non_root: csc
                .and_then(|c| c.run_as_non_root)
                .or(psc.and_then(|p| p.run_as_non_root))
                .unwrap_or(false),
            supplemental_groups: groups,
            strict_groups: psc.and_then(|p| p.supplemental_groups_policy.as_deref())
                == Some("Strict"),
            read_only_root: csc.and_then(|c| c.read_only_root_filesystem) == Some(true),
            privileged: csc.and_then(|c| c.privileged) == Some(true),
            add_caps: names(caps.and_then(|c| c.add.as_ref())),
            drop_caps: names(caps.and_then(|c| c.drop.as_ref())),
            no_new_privileges: csc.and_then(|c| c.allow_privilege_escalation) == Some(false),
            unmasked_proc: csc.and_then(|c| c.proc_mount.as_deref()) == Some("Unmasked"),
            seccomp: match csc
                .and_then(|c| c.seccomp_profile.as_ref())
                .or(psc.and_then(|p| p.seccomp_profile.as_ref()))
            {
                Some(p) if p.type_ == "RuntimeDefault" => Seccomp::RuntimeDefault,
                Some(p) if p.type_ == "Localhost" => {
                    Seccomp::Localhost(p.localhost_profile.clone().unwrap_or_default())
                }
                _ => Seccomp::Unconfined,
            },
        }
    }
}

/// The user an image runs as, as the CRI plugin reports it: a uid, a name, or neither
/// (which the kubelet takes for root). The group part of `USER` is not reported.
#[derive(Clone, Debug, PartialEq)]
pub enum ImageUser {
    Uid(i64),
    Name(String),
}

pub fn image_user(user: Option<&str>) -> ImageUser {
    let user = user.unwrap_or("");
    let name = user.split(':').next().unwrap_or("");
    match name.parse::<i64>() {
        _ if name.is_empty() => ImageUser::Uid(0),
        Ok(uid) => ImageUser::Uid(uid),
        Err(_) => ImageUser::Name(name.to_string()),
    }
}

/// Upstream's `verifyRunAsNonRoot`; `pod` is upstream's `name_namespace(uid)`.
pub fn verify_run_as_non_root(
    sc: &SecurityContext,
    image: &ImageUser,
    pod: &str,
    container: &str,
) -> Result<(), String> {
    if !sc.run_as_non_root {
        return Ok(());
    }
    if let Some(uid) = sc.run_as_user {
        if uid == 0 {
            return Err(format!(
                "container's runAsUser breaks non-root policy (pod: {pod:?}, container: {container})"
            ));
        }
        return Ok(());
    }
    match image {
        ImageUser::Uid(0) => Err(format!(
            "container has runAsNonRoot and image will run as root (pod: {pod:?}, container: {container})"
        )),
        ImageUser::Uid(_) => Ok(()),
        ImageUser::Name(name) => Err(format!(
            "container has runAsNonRoot and image has non-numeric user ({name}), cannot verify user is non-root (pod: {pod:?}, container: {container})"
        )),
    }
}

/// What the runtime resolves against the image's /etc/passwd and /etc/group.
#[derive(Clone, Debug, PartialEq)]
pub struct UserRequest {
    /// `uid`, `name`, `uid:gid`, `name:gid` (containerd's `WithUser`).
    pub user: String,
    /// Whose groups in /etc/group count (containerd's `WithAdditionalGIDs`).
    pub groups_of: String,
    pub supplemental: Vec<u32>,
    pub strict: bool,
}

/// The CRI plugin's user string: runAsUser, else the image's user (its uid or name; root
/// when it names none), with `:runAsGroup` when that is set.
pub fn user_request(sc: &SecurityContext, image: &ImageUser) -> UserRequest {
    let user = match (sc.run_as_user, image) {
        (Some(uid), _) => uid.to_string(),
        (None, ImageUser::Uid(uid)) => uid.to_string(),
        (None, ImageUser::Name(n)) => n.clone(),
    };
    let full = match sc.run_as_group {
        Some(g) => format!("{user}:{g}"),
        None => user.clone(),
    };
    UserRequest {
        user: full,
        groups_of: user,
        supplemental: sc.supplemental_groups.iter().map(|g| *g as u32).collect(),
        strict: sc.strict_groups,
    }
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let _ = f.next()?;
        let uid = f.next()?.trim().parse().ok()?;
        let gid = f.next()?.trim().parse().ok()?;
        Some(PasswdEntry { name, uid, gid })
    })
}

/// (name, gid, members) of each /etc/group line.
fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let _ = f.next()?;
        let gid = f.next()?.trim().parse().ok()?;
        let members = f
            .next()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .collect();
        Some((name, gid, members))
    })
}

/// uid, gid and supplementary groups for `req`, given the image's /etc/passwd and /etc/group
/// (None when the image has none). A user or group name the image does not know is an error.
pub fn resolve_user(
    req: &UserRequest,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<(u32, u32, Vec<u32>), String> {
    let passwd = passwd.unwrap_or("");
    let group = group.unwrap_or("");
    let by_name = |name: &str| {
        passwd_entries(passwd)
            .find(|e| e.name == name)
            .ok_or_else(|| format!("no users found for user {name:?} in the image's /etc/passwd"))
    };
    let (uid, gid) = match req.user.split_once(':') {
        None => match req.user.parse::<u32>() {
            // A uid alone: its passwd entry's group, or 0.
            Ok(uid) => (
                uid,
                passwd_entries(passwd)
                    .find(|e| e.uid == uid)
                    .map_or(0, |e| e.gid),
            ),
            Err(_) => {
                let e = by_name(&req.user)?;
                (e.uid, e.gid)
            }
        },
        Some((u, g)) => {
            let uid = match u.parse::<u32>() {
                Ok(uid) => uid,
                Err(_) => by_name(u)?.uid,
            };
            let gid = match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => group_entries(group)
                    .find(|(n, _, _)| *n == g)
                    .map(|(_, gid, _)| gid)
                    .ok_or_else(|| {
                        format!("no groups found for group {g:?} in the image's /etc/group")
                    })?,
            };
            (uid, gid)
        }
    };
    let mut gids = vec![gid];
    if !req.strict {
        let name = match req.groups_of.parse::<u32>() {
            Ok(uid) => passwd_entries(passwd)
                .find(|e| e.uid == uid)
                .map(|e| e.name.to_string()),
            Err(_) => Some(req.groups_of.clone()),
        };
        if let Some(name) = name {
            gids.extend(
                group_entries(group)
                    .filter(|(n, _, members)| *n != name && members.contains(&name.as_str()))
                    .map(|(_, gid, _)| gid),
            );
        }
    }
    gids.extend(&req.supplemental);
    gids.sort_unstable();
    gids.dedup();
    Ok((uid, gid, gids))
}

/// The capability set (bounding = effective = permitted): containerd's default with `add`
/// and `drop` applied as the CRI plugin does, or everything for privileged containers.
pub fn capabilities(sc: &SecurityContext, host: &HostSecurity) -> Vec<String> {
    if sc.privileged {
        return host.all_caps.clone();
    }
    let mut caps: Vec<String> = DEFAULT_CAPS.iter().map(|c| c.to_string()).collect();
    if sc.add_caps.iter().any(|c| c == "ALL") {
        caps = host.all_caps.clone();
    }
    if sc.drop_caps.iter().any(|c| c == "ALL") {
        caps.clear();
    }
    for c in sc.add_caps.iter().filter(|c| *c != "ALL") {
        let c = format!("CAP_{c}");
        if !caps.contains(&c) {
            caps.push(c);
        }
    }
    for c in sc.drop_caps.iter().filter(|c| *c != "ALL") {
        let c = format!("CAP_{c}");
        caps.retain(|x| *x != c);
    }
    caps
}

/// A device node of the host, for privileged containers.
#[derive(Clone, Debug, PartialEq)]
pub struct Device {
    pub path: String,
    /// `c` or `b`.
    pub kind: char,
    pub major: u64,
    pub minor: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// The OCI process identity and confinement of one container.
#[derive(Clone, Debug, PartialEq)]
pub struct OciSecurity {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub caps: Vec<String>,
    pub no_new_privileges: bool,
    pub read_only_root: bool,
    /// Writable /sys, every device allowed.
    pub privileged: bool,
    pub masked_paths: Vec<String>,
    pub readonly_paths: Vec<String>,
    /// Host devices created in the container (privileged containers).
    pub devices: Vec<Device>,
    /// The OCI `linux.seccomp` profile (None: no filter).
    pub seccomp: Option<serde_json::Value>,
}

impl Default for OciSecurity {
    /// Root with containerd's default capabilities and upstream's masked paths (the pause
    /// sandbox).
    fn default() -> Self {
        OciSecurity {
            uid: 0,
            gid: 0,
            additional_gids: Vec::new(),
            caps: DEFAULT_CAPS.iter().map(|c| c.to_string()).collect(),
            no_new_privileges: false,
            read_only_root: false,
            privileged: false,
            masked_paths: DEFAULT_MASKED_PATHS.iter().map(|p| p.to_string()).collect(),
            readonly_paths: DEFAULT_READONLY_PATHS
                .iter()
                .map(|p| p.to_string())
                .collect(),
            devices: Vec::new(),
            seccomp: None,
        }
    }
}

/// Everything but the user (resolved against the image later) and the devices (read from the
/// host for privileged containers).
pub fn oci_security(sc: &SecurityContext, host: &HostSecurity) -> OciSecurity {
    let unmasked = sc.unmasked_proc || sc.privileged;
    let caps = capabilities(sc, host);
    // Privileged containers run without a filter, as upstream's; a Localhost profile is
    // read by the runtime, which knows where profiles live.
    let seccomp = match &sc.seccomp {
        Seccomp::RuntimeDefault if !sc.privileged => Some(runtime_default_seccomp(&caps)),
        _ => None,
    };
    OciSecurity {
        seccomp,
        caps,
        no_new_privileges: sc.no_new_privileges,
        read_only_root: sc.read_only_root,
        privileged: sc.privileged,
        masked_paths: if unmasked {
            Vec::new()
        } else {
            DEFAULT_MASKED_PATHS
                .iter()
                .map(|p| p.to_string())
                .chain(host.extra_masked.iter().cloned())
                .collect()
        },
        readonly_paths: if unmasked {
            Vec::new()
        } else {
            DEFAULT_READONLY_PATHS
                .iter()
                .map(|p| p.to_string())
                .collect()
        },
        ..OciSecurity::default()
    }
}

/// Capability names from a `/proc/<pid>/status` capability mask (`CapBnd` and friends).
pub fn caps_from_mask(mask: u64) -> Vec<String> {
    CAP_NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| mask & (1u64 << i) != 0)
        .map(|(_, n)| n.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn runtime_default_seccomp_blocks_what_no_held_capability_permits() {
        // the names the profile allows without conditions
        let names = |caps: &[&str]| -> Vec<String> {
            let caps: Vec<String> = caps.iter().map(|c| c.to_string()).collect();
            let p = runtime_default_seccomp(&caps);
            assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
            assert_eq!(p["defaultErrnoRet"], 1);
            let rules = p["syscalls"].as_array().unwrap();
            rules
                .iter()
                .filter(|r| r["action"] == "SCMP_ACT_ALLOW" && r.get("args").is_none())
                .flat_map(|r| r["names"].as_array().unwrap())
                .map(|n| n.as_str().unwrap().to_string())
                .collect()
        };
        let plain = names(&["CHOWN", "NET_BIND_SERVICE"]);
        for common in [
            "read",
            "openat",
            "execve",
            "futex",
            "rseq",
            "statx",
            "epoll_pwait2",
        ] {
            assert!(plain.iter().any(|n| n == common), "{common}");
        }
        for refused in [
            "mount",
            "unshare",
            "setns",
            "keyctl",
            "ptrace",
            "reboot",
            "init_module",
            "io_uring_setup",
            "fsopen",
            "syslog",
            // allowed only with conditions
            "clone",
            "clone3",
            "personality",
        ] {
            assert!(!plain.iter().any(|n| n == refused), "{refused}");
        }
        let rules = |caps: &[&str]| -> Vec<serde_json::Value> {
            let caps: Vec<String> = caps.iter().map(|c| c.to_string()).collect();
            runtime_default_seccomp(&caps)["syscalls"]
                .as_array()
                .unwrap()
                .clone()
        };
        let named = |rules: &[serde_json::Value], name: &str| -> Vec<serde_json::Value> {
            rules
                .iter()
                .filter(|r| r["names"].as_array().unwrap().iter().any(|n| n == name))
                .cloned()
                .collect()
        };
        // without CAP_SYS_ADMIN: clone only when no namespace flag is set, clone3 ENOSYS
        let r = rules(&["CHOWN"]);
        let clone = named(&r, "clone");
        assert_eq!(clone.len(), 1, "{clone:?}");
        assert_eq!(clone[0]["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        assert_eq!(clone[0]["args"][0]["valueTwo"], 0);
        let mask = clone[0]["args"][0]["value"].as_u64().unwrap();
        for flag in [0x0002_0000u64, 0x1000_0000, 0x4000_0000, 0x2000_0000] {
            assert_eq!(mask & flag, flag, "CLONE_NEW* {flag:#x}");
        }
        // threads and forks (CLONE_VM|CLONE_THREAD|..., SIGCHLD) pass
        assert_eq!(mask & 0x003d_0f00, 0);
        let clone3 = named(&r, "clone3");
        assert_eq!(clone3[0]["action"], "SCMP_ACT_ERRNO");
        assert_eq!(clone3[0]["errnoRet"], 38);
        assert_eq!(named(&r, "personality").len(), PERSONALITIES.len());
        let r = rules(&["SYS_ADMIN"]);
        assert!(named(&r, "clone")
            .iter()
            .any(|c| c["action"] == "SCMP_ACT_ALLOW" && c.get("args").is_none()));
        assert!(named(&r, "clone3")
            .iter()
            .all(|c| c["action"] == "SCMP_ACT_ALLOW"));
        let admin = names(&["SYS_ADMIN", "SYS_PTRACE"]);
        for allowed in ["mount", "unshare", "setns", "ptrace", "bpf", "fsopen"] {
            assert!(admin.iter().any(|n| n == allowed), "{allowed}");
        }
        // a capability never lifts the unconditional ones
        for refused in ["keyctl", "reboot", "io_uring_setup", "syslog"] {
            assert!(!admin.iter().any(|n| n == refused), "{refused}");
        }
        // privileged containers and Unconfined get no filter
        let sc = SecurityContext {
            seccomp: Seccomp::RuntimeDefault,
            privileged: true,
            ..Default::default()
        };
        let host = HostSecurity::default();
        assert!(oci_security(&sc, &host).seccomp.is_none());
        let sc = SecurityContext {
            seccomp: Seccomp::RuntimeDefault,
            ..Default::default()
        };
        assert!(oci_security(&sc, &host).seccomp.is_some());
        assert!(oci_security(&SecurityContext::default(), &host)
            .seccomp
            .is_none());
    }

    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
    }

    fn host() -> HostSecurity {
        HostSecurity {
            all_caps: caps_from_mask(0x1ff_feff_ffff),
            extra_masked: vec!["/sys/devices/system/cpu/cpu0/thermal_throttle".into()],
        }
    }

    #[test]
    fn the_container_level_wins_and_pod_groups_follow_fs_group() {
        let p = pod(json!({
            "securityContext": {"runAsUser": 1000, "runAsGroup": 3000, "runAsNonRoot": true,
                                "fsGroup": 2000, "supplementalGroups": [4000, 5000]},
            "containers": [
                {"name": "a", "image": "x", "securityContext": {"runAsUser": 1001, "readOnlyRootFilesystem": true,
                 "allowPrivilegeEscalation": false, "capabilities": {"add": ["net_admin"], "drop": ["CAP_KILL"]}}},
                {"name": "b", "image": "x"},
            ]
        }));
        let spec = p.spec.clone().unwrap();
        let a = SecurityContext::effective(&p, &spec.containers[0]);
        assert_eq!(a.run_as_user, Some(1001));
        assert_eq!(a.run_as_group, Some(3000));
        assert!(a.run_as_non_root && a.read_only_root && a.no_new_privileges);
        assert_eq!(a.supplemental_groups, vec![2000, 4000, 5000]);
        assert_eq!(
            (a.add_caps.clone(), a.drop_caps.clone()),
            (vec!["NET_ADMIN".to_string()], vec!["KILL".to_string()])
        );
        let b = SecurityContext::effective(&p, &spec.containers[1]);
        assert_eq!(b.run_as_user, Some(1000));
        assert!(!b.read_only_root && !b.no_new_privileges && !b.privileged);
        let none = SecurityContext::effective(&pod(json!({"containers": []})), &spec.containers[1]);
        assert_eq!(none, SecurityContext::default());
    }

    #[test]
    fn run_as_non_root_follows_upstream() {
        let sc = SecurityContext {
            run_as_non_root: true,
            ..Default::default()
        };
        let pod = "web_default(u1)";
        assert_eq!(
            verify_run_as_non_root(&sc, &image_user(None), pod, "main").unwrap_err(),
            "container has runAsNonRoot and image will run as root (pod: \"web_default(u1)\", container: main)"
        );
        assert!(verify_run_as_non_root(&sc, &image_user(Some("65534:65534")), pod, "main").is_ok());
        assert!(
            verify_run_as_non_root(&sc, &image_user(Some("nobody")), pod, "main")
                .unwrap_err()
                .contains("image has non-numeric user (nobody), cannot verify user is non-root")
        );
        let root = SecurityContext {
            run_as_user: Some(0),
            ..sc.clone()
        };
        assert!(
            verify_run_as_non_root(&root, &image_user(Some("1000")), pod, "main")
                .unwrap_err()
                .starts_with("container's runAsUser breaks non-root policy")
        );
        let user = SecurityContext {
            run_as_user: Some(7),
            ..sc
        };
        assert!(verify_run_as_non_root(&user, &image_user(None), pod, "main").is_ok());
        assert!(verify_run_as_non_root(
            &SecurityContext::default(),
            &image_user(None),
            pod,
            "main"
        )
        .is_ok());
    }

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\napp:x:1000:1000::/home/app:/bin/sh\n";
    const GROUP: &str =
        "root:x:0:\nnogroup:x:65534:\napp:x:1000:app\nwheel:x:10:app,root\naudio:x:29:app\n";

    #[test]
    fn users_resolve_against_the_image_like_containerd() {
        let req = |sc: &SecurityContext, image: &str| user_request(sc, &image_user(Some(image)));
        let r = |sc: &SecurityContext, image: &str| {
            resolve_user(&req(sc, image), Some(PASSWD), Some(GROUP))
        };
        let none = SecurityContext::default();
        // The image's user; root when it names none (group membership from /etc/group).
        assert_eq!(r(&none, "").unwrap(), (0, 0, vec![0, 10]));
        assert_eq!(r(&none, "app").unwrap(), (1000, 1000, vec![10, 29, 1000]));
        // The image's group is dropped, as upstream's kubelet passes the uid alone.
        assert_eq!(r(&none, "65534:10").unwrap(), (65534, 65534, vec![65534]));
        // runAsUser: its passwd group (or 0 when unknown); runAsGroup overrides it.
        let sc = SecurityContext {
            run_as_user: Some(1000),
            supplemental_groups: vec![2000, 4000],
            ..Default::default()
        };
        assert_eq!(
            r(&sc, "").unwrap(),
            (1000, 1000, vec![10, 29, 1000, 2000, 4000])
        );
        let sc = SecurityContext {
            run_as_group: Some(3000),
            ..sc
        };
        assert_eq!(
            r(&sc, "").unwrap(),
            (1000, 3000, vec![10, 29, 2000, 3000, 4000])
        );
        let strict = SecurityContext {
            strict_groups: true,
            ..sc
        };
        assert_eq!(
            r(&strict, "").unwrap(),
            (1000, 3000, vec![2000, 3000, 4000])
        );
        let unknown = SecurityContext {
            run_as_user: Some(4242),
            ..Default::default()
        };
        assert_eq!(r(&unknown, "").unwrap(), (4242, 0, vec![0]));
        assert_eq!(
            resolve_user(&req(&unknown, ""), None, None).unwrap(),
            (4242, 0, vec![0])
        );
        assert!(r(&none, "ghost").unwrap_err().contains("no users found"));
        assert!(resolve_user(
            &UserRequest {
                user: "app:staff".into(),
                groups_of: "app".into(),
                supplemental: vec![],
                strict: false
            },
            Some(PASSWD),
            Some(GROUP)
        )
        .unwrap_err()
        .contains("no groups found"));
    }

    #[test]
    fn capabilities_follow_the_cri_plugin() {
        let caps = |add: &[&str], drop: &[&str]| {
            capabilities(
                &SecurityContext {
                    add_caps: add.iter().map(|s| s.to_string()).collect(),
                    drop_caps: drop.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                },
                &host(),
            )
        };
        assert_eq!(caps(&[], &[]).len(), 14);
        assert_eq!(
            caps(&["NET_BIND_SERVICE"], &["ALL"]),
            vec!["CAP_NET_BIND_SERVICE"]
        );
        let c = caps(&["NET_ADMIN", "SYS_TIME"], &["KILL", "SYS_TIME"]);
        assert!(c.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!c.contains(&"CAP_KILL".to_string()) && !c.contains(&"CAP_SYS_TIME".to_string()));
        let all = caps(&["ALL"], &["CHOWN"]);
        assert_eq!(all.len(), host().all_caps.len() - 1);
        assert!(
            !all.contains(&"CAP_SYS_RESOURCE".to_string()),
            "only what the host has"
        );
        let privileged = SecurityContext {
            privileged: true,
            drop_caps: vec!["ALL".into()],
            ..Default::default()
        };
        assert_eq!(capabilities(&privileged, &host()), host().all_caps);
    }

    #[test]
    fn masked_paths_and_privileges() {
        let plain = oci_security(&SecurityContext::default(), &host());
        assert_eq!(plain.masked_paths.len(), 13);
        assert!(plain.masked_paths.contains(&"/proc/kcore".to_string()));
        assert!(plain
            .masked_paths
            .contains(&"/sys/devices/system/cpu/cpu0/thermal_throttle".to_string()));
        assert_eq!(plain.readonly_paths.len(), 5);
        assert!(!plain.no_new_privileges && !plain.read_only_root);
        let unmasked = oci_security(
            &SecurityContext {
                unmasked_proc: true,
                ..Default::default()
            },
            &host(),
        );
        assert!(unmasked.masked_paths.is_empty() && unmasked.readonly_paths.is_empty());
        let privileged = oci_security(
            &SecurityContext {
                privileged: true,
                ..Default::default()
            },
            &host(),
        );
        assert!(privileged.privileged && privileged.masked_paths.is_empty());
        assert_eq!(caps_from_mask(0x400), vec!["CAP_NET_BIND_SERVICE"]);
    }
}
