//! Feeding the zone from the API: kube-rs reflectors on Services and EndpointSlices. Each
//! event is applied to `ClusterState` at once (no polling); a relist (`InitDone`) replaces
//! the whole zone from the reflector stores in one publish.

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::http::Status;
use crate::metrics::Metrics;
use crate::state::ClusterState;

/// One event from either watch. Events move once each, so the size difference between
/// the variants costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
pub enum Change {
    Service(Event<Service>),
    Slice(Event<EndpointSlice>),
}

/// Applies watch events to the zone. Holds the reflector stores so a relist can rebuild
/// the zone from complete lists.
pub struct Feed {
    state: ClusterState,
    services: Store<Service>,
    slices: Store<EndpointSlice>,
    services_synced: bool,
    slices_synced: bool,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
}

impl Feed {
    pub fn new(
        state: ClusterState,
        services: Store<Service>,
        slices: Store<EndpointSlice>,
        status: Arc<Status>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            state,
            services,
            slices,
            services_synced: false,
            slices_synced: false,
            status,
            metrics,
        }
    }

    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// Applies one event whose object the reflector has already written to its store.
    pub fn apply(&mut self, change: Change) {
        let started = Instant::now();
        let changed = match change {
            Change::Service(event) => match event {
                Event::Apply(svc) => {
                    if let Err(error) = self.state.apply_service(&svc) {
                        tracing::debug!(%error, name = %svc.name_any(), "ignoring service");
                    }
                    true
                }
                Event::Delete(svc) => {
                    self.state
                        .delete_service(&svc.namespace().unwrap_or_default(), &svc.name_any());
                    true
                }
                Event::InitDone => {
                    self.services_synced = true;
                    self.resync();
                    false
                }
                // the store buffers a relist until InitDone; answering from half a list
                // would turn existing services into NXDOMAIN
                Event::Init | Event::InitApply(_) => false,
            },
            Change::Slice(event) => match event {
                Event::Apply(slice) => {
                    if let Err(error) = self.state.apply_slice(&slice) {
                        tracing::debug!(%error, name = %slice.name_any(), "ignoring endpointslice");
                    }
                    true
                }
                Event::Delete(slice) => {
                    self.state
                        .delete_slice(&slice.namespace().unwrap_or_default(), &slice.name_any());
                    true
                }
                Event::InitDone => {
                    self.slices_synced = true;
                    self.resync();
                    false
                }
                Event::Init | Event::InitApply(_) => false,
            },
        };
        if changed {
            self.metrics.programming_duration.observe(started.elapsed());
        }
    }

    fn resync(&mut self) {
        let services: Vec<Service> = self
            .services
            .state()
            .iter()
            .map(|s| (**s).clone())
            .collect();
        let slices: Vec<EndpointSlice> =
            self.slices.state().iter().map(|s| (**s).clone()).collect();
        self.state.replace_all(&services, &slices);
        if self.services_synced && self.slices_synced {
            self.status.set_ready();
        }
    }
}

/// Watches Services and EndpointSlices in all namespaces until `shutdown`, feeding `state`.
/// Watch errors are retried with backoff by the watcher; they never end the feed.
pub async fn run_feed(
    client: Client,
    state: ClusterState,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let (svc_store, svc_writer) = reflector::store::<Service>();
    let (slice_store, slice_writer) = reflector::store::<EndpointSlice>();
    let services = reflector::reflector(
        svc_writer,
        watcher::watcher(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .map(|r| r.map(Change::Service));
    let slices = reflector::reflector(
        slice_writer,
        watcher::watcher(
            Api::<EndpointSlice>::all(client),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .map(|r| r.map(Change::Slice));
    let mut events = std::pin::pin!(futures::stream::select(services, slices));
    let mut feed = Feed::new(state, svc_store, slice_store, status, metrics);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            next = events.next() => match next {
                Some(Ok(change)) => feed.apply(change),
                Some(Err(error)) => tracing::warn!(%error, "watching services/endpointslices"),
                None => break,
            },
        }
    }
}
