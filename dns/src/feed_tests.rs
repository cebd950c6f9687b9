//! The feed's apply logic, driven the way `reflector()` drives it (store first, then the
//! event), without an apiserver.

use std::sync::Arc;

use hickory_server::proto::rr::{Name, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, store::Writer};
use kube::runtime::watcher::Event;

use crate::feed::{Change, Feed};
use crate::fixtures::*;
use crate::http::Status;
use crate::metrics::Metrics;
use crate::snapshot::Lookup;
use crate::state::{ClusterState, ZoneHandle};

struct Harness {
    feed: Feed,
    svc_writer: Writer<Service>,
    slice_writer: Writer<EndpointSlice>,
    zone: ZoneHandle,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
}

impl Harness {
    fn new() -> Self {
        let (svc_store, svc_writer) = reflector::store::<Service>();
        let (slice_store, slice_writer) = reflector::store::<EndpointSlice>();
        let state = ClusterState::new(Name::from_ascii("cluster.local.").unwrap(), 5);
        let zone = state.handle();
        let status = Arc::new(Status::default());
        let metrics = Arc::new(Metrics::default());
        let feed = Feed::new(
            state,
            svc_store,
            slice_store,
            status.clone(),
            metrics.clone(),
        );
        Self {
            feed,
            svc_writer,
            slice_writer,
            zone,
            status,
            metrics,
        }
    }

    fn svc(&mut self, event: Event<Service>) {
        self.svc_writer.apply_watcher_event(&event);
        self.feed.apply(Change::Service(event));
    }

    fn slice(&mut self, event: Event<EndpointSlice>) {
        self.slice_writer.apply_watcher_event(&event);
        self.feed.apply(Change::Slice(event));
    }

    fn a(&self, name: &str) -> Lookup {
        self.zone
            .load()
            .lookup(&Name::from_ascii(name).unwrap(), RecordType::A)
    }
}

fn web() -> Service {
    cluster_ip_service("default", "web", &["10.43.0.20"], &[("http", "TCP", 80)])
}

#[test]
fn initial_lists_publish_only_when_done_and_ready_needs_both() {
    let mut h = Harness::new();
    h.svc(Event::Init);
    h.svc(Event::InitApply(web()));
    // half a list is never served
    assert_eq!(h.a("web.default.svc.cluster.local."), Lookup::NxDomain);
    h.svc(Event::InitDone);
    assert!(matches!(
        h.a("web.default.svc.cluster.local."),
        Lookup::Answer { .. }
    ));
    assert!(!h.status.is_ready(), "ready before endpointslices synced");
    h.slice(Event::Init);
    h.slice(Event::InitDone);
    assert!(h.status.is_ready());
}

#[test]
fn apply_and_delete_events_change_answers_at_once() {
    let mut h = Harness::new();
    h.svc(Event::InitDone);
    h.slice(Event::InitDone);
    h.svc(Event::Apply(headless_service("db", "pg", &[], false)));
    assert_eq!(h.a("pg.db.svc.cluster.local."), Lookup::NxDomain);
    let slice = endpoint_slice(
        "db",
        "pg-1",
        "pg",
        "IPv4",
        &[(&["10.42.0.5"], Some("pg-0"), true)],
        &[],
    );
    h.slice(Event::Apply(slice.clone()));
    assert!(matches!(
        h.a("pg-0.pg.db.svc.cluster.local."),
        Lookup::Answer { .. }
    ));
    h.slice(Event::Delete(slice));
    assert_eq!(h.a("pg-0.pg.db.svc.cluster.local."), Lookup::NxDomain);
    h.svc(Event::Apply(web()));
    assert!(matches!(
        h.a("web.default.svc.cluster.local."),
        Lookup::Answer { .. }
    ));
    h.svc(Event::Delete(web()));
    assert_eq!(h.a("web.default.svc.cluster.local."), Lookup::NxDomain);
    assert!(h.metrics.programming_duration.count() >= 5);
}

#[test]
fn a_relist_drops_objects_deleted_while_the_watch_was_down() {
    let mut h = Harness::new();
    h.svc(Event::Init);
    h.svc(Event::InitApply(web()));
    h.svc(Event::InitApply(external_name_service(
        "default",
        "ext",
        "example.org",
    )));
    h.svc(Event::InitDone);
    assert!(matches!(
        h.a("ext.default.svc.cluster.local."),
        Lookup::Answer { .. }
    ));
    // the watch broke; `ext` was deleted meanwhile; the relist no longer has it
    h.svc(Event::Init);
    h.svc(Event::InitApply(web()));
    assert!(
        matches!(h.a("ext.default.svc.cluster.local."), Lookup::Answer { .. }),
        "old state stays until the relist is complete"
    );
    h.svc(Event::InitDone);
    assert_eq!(h.a("ext.default.svc.cluster.local."), Lookup::NxDomain);
    assert!(matches!(
        h.a("web.default.svc.cluster.local."),
        Lookup::Answer { .. }
    ));
}
