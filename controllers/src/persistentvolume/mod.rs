//! PersistentVolumes and their claims, as upstream's controller-manager keeps them:
//!
//! - `persistentvolume-binder` ([`binder`]): upstream's PV controller. A Pending claim is
//!   bound to the best Available volume ([`component::volumes::find_best_match`]: class,
//!   access modes, capacity — the smallest that fits —, `selector`, `volumeMode`; a volume
//!   whose `claimRef` names the claim or the volume the claim names in `spec.volumeName`
//!   first); both sides are written as upstream does (the volume's `claimRef` and phase
//!   `Bound`, then the claim's `volumeName`, `pv.kubernetes.io/bind-completed` and
//!   `bound-by-controller` annotations and its status: phase, capacity, access modes). A
//!   claim of a `WaitForFirstConsumer` class waits for the scheduler (`WaitForFirstConsumer`
//!   / `WaitForPodScheduled` events), which either pre-binds a volume or names a node
//!   (`volume.kubernetes.io/selected-node`) for provisioning. A claim without a class gets
//!   the default class once one exists. A volume whose claim is gone is `Released` and then
//!   reclaimed per its policy: `Retain` keeps it, `Delete` deletes it when kaze's
//!   local-path provisioner made it (an external provisioner's are left to it; others are
//!   `Failed`, no plugin can delete them). Claims whose bound volume vanished are `Lost`.
//! - the built-in `kaze.io/local-path` provisioner ([`provision`], run by the binder unless
//!   `local-path-provisioner` is turned off): k3s's local-path-provisioner in-process. See
//!   its module.
//! - `pvc-protection` and `pv-protection` ([`protection`]): the
//!   `kubernetes.io/pvc-protection` / `pv-protection` finalizers (the apiserver's
//!   StorageObjectInUseProtection admission adds them at creation; these add them to objects
//!   without) are removed once no scheduled pod uses the claim / the volume is not Bound.
//! - `ephemeral-volume` ([`ephemeral`]): upstream's ephemeral volume controller, the claim
//!   `<pod>-<volume>` of every generic ephemeral volume, owned by its pod.
//!
//! Events come from `persistentvolume-controller` (and `kaze.io/local-path` for the
//! provisioner's own, `ephemeral_volume` for the ephemeral volume controller's), with upstream's reasons and messages.

pub mod binder;
pub mod ephemeral;
pub mod protection;
pub mod provision;

pub use binder::run as run_binder;
pub use protection::{run_pv_protection, run_pvc_protection};
