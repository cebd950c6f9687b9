//! Binding and serving: per `--bind` address, one UDP socket per core served by `udp.rs`
//! and a TCP listener served by hickory's `Server`; and the HTTP port. Everything is bound
//! before `serve`, so a caller knows the ports (tests use port 0) and a bind failure
//! surfaces before the first query.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::forward::{ForwardConfig, Forwarder};
use crate::handler::Handler;
use crate::http::{router, Status};
use crate::metrics::Metrics;
use crate::state::ZoneHandle;
use crate::Error;

/// How long an idle TCP client may hold a connection.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub bind: Vec<SocketAddr>,
    pub http_bind: Option<SocketAddr>,
    pub forward: ForwardConfig,
    /// How long to keep answering after shutdown starts, with health checks failing.
    pub lameduck: Duration,
}

pub struct DnsServer {
    dns_addrs: Vec<SocketAddr>,
    http_addr: Option<SocketAddr>,
    server: hickory_server::Server<Handler>,
    handler: Handler,
    udp: Vec<std::net::UdpSocket>,
    http: Option<TcpListener>,
    status: Arc<Status>,
    metrics: Arc<Metrics>,
    forwarder: Arc<Forwarder>,
    lameduck: Duration,
}

impl DnsServer {
    pub async fn bind(
        options: ServerOptions,
        zone: ZoneHandle,
        status: Arc<Status>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, Error> {
        let forwarder = Arc::new(Forwarder::new(options.forward.clone(), metrics.clone()));
        let handler = Handler::new(zone, forwarder.clone(), metrics.clone());
        let mut server = hickory_server::Server::new(handler.clone());
        let mut dns_addrs = Vec::new();
        let mut udp_sockets = Vec::new();
        for addr in &options.bind {
            let (udp, tcp) = bind_pair(*addr).await?;
            let local = tcp.local_addr().map_err(|source| Error::Bind {
                addr: *addr,
                source,
            })?;
            dns_addrs.push(local);
            udp_sockets.extend(udp);
            server.register_listener(tcp, TCP_IDLE_TIMEOUT, 64 * 1024);
        }
        let (http, http_addr) = match options.http_bind {
            Some(addr) => {
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(|source| Error::Bind { addr, source })?;
                let local = l
                    .local_addr()
                    .map_err(|source| Error::Bind { addr, source })?;
                (Some(l), Some(local))
            }
            None => (None, None),
        };
        Ok(Self {
            dns_addrs,
            http_addr,
            server,
            handler,
            udp: udp_sockets,
            http,
            status,
            metrics,
            forwarder,
            lameduck: options.lameduck,
        })
    }

    /// The bound DNS addresses (UDP and TCP share each one).
    pub fn dns_addrs(&self) -> &[SocketAddr] {
        &self.dns_addrs
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    pub fn forwarder(&self) -> Arc<Forwarder> {
        self.forwarder.clone()
    }

    /// Serves until `shutdown` is cancelled; then, for the lameduck period, keeps answering
    /// while `/health` and `/ready` fail (so load balancers drain it), stops accepting,
    /// lets the HTTP server drain, and returns once every task has ended.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), Error> {
        let Self {
            mut server,
            handler,
            udp,
            http,
            status,
            metrics,
            lameduck,
            ..
        } = self;
        let mut tasks: JoinSet<Result<(), Error>> = JoinSet::new();
        // cancelled after the lameduck period; everything that stops serving waits on it
        let stop = CancellationToken::new();
        // the UDP threads cannot be aborted like tasks: if this future is dropped instead
        // of run to the end, they must still hear that serving is over
        let _stop_on_drop = stop.clone().drop_guard();

        if let Some(listener) = http {
            let app = router(status.clone(), metrics);
            let token = stop.clone();
            tasks.spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(token.cancelled_owned())
                    .await
                    .map_err(|source| Error::Serve {
                        what: "http",
                        source,
                    })
            });
        }

        let hickory_token = server.shutdown_token().clone();
        let token = shutdown.clone();
        let stop_all = stop.clone();
        tasks.spawn(async move {
            tokio::select! {
                _ = token.cancelled() => {
                    status.set_stopping();
                    tokio::time::sleep(lameduck).await;
                }
                _ = stop_all.cancelled() => {}
            }
            stop_all.cancel();
            hickory_token.cancel();
            Ok(())
        });
        for socket in udp {
            let token = stop.clone();
            let handler = handler.clone();
            let runtime = tokio::runtime::Handle::current();
            tasks.spawn_blocking(move || {
                let result = crate::udp::serve_blocking(socket, handler, token.clone(), runtime);
                if token.is_cancelled() {
                    return Ok(());
                }
                // a UDP socket ending on its own is fatal: stop the rest too
                token.cancel();
                Err(Error::Serve {
                    what: "dns udp",
                    source: result
                        .err()
                        .unwrap_or_else(|| std::io::Error::other("udp socket ended unexpectedly")),
                })
            });
        }
        let token = stop.clone();
        tasks.spawn(async move {
            let result = server.block_until_done().await;
            if token.is_cancelled() {
                return Ok(());
            }
            // the DNS sockets ending on their own is fatal: stop the rest too
            token.cancel();
            Err(Error::Serve {
                what: "dns",
                source: std::io::Error::other(match result {
                    Ok(()) => "dns listeners ended unexpectedly".to_string(),
                    Err(e) => e.to_string(),
                }),
            })
        });

        let mut first_error = None;
        while let Some(joined) = tasks.join_next().await {
            let result = joined.map_err(|e| Error::Serve {
                what: "task",
                source: std::io::Error::other(e),
            });
            if let Err(e) = result.and_then(|r| r) {
                stop.cancel();
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Binds UDP and TCP on one address. With port 0 the TCP port must equal the UDP one the
/// kernel chose, which may be taken for TCP: retry a few times.
async fn bind_pair(addr: SocketAddr) -> Result<(Vec<std::net::UdpSocket>, TcpListener), Error> {
    let mut last = None;
    for _ in 0..16 {
        let udp = bind_udp_group(addr).map_err(|source| Error::Bind { addr, source })?;
        let local = udp[0]
            .local_addr()
            .map_err(|source| Error::Bind { addr, source })?;
        match TcpListener::bind(local).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(source) if addr.port() == 0 => last = Some(source),
            Err(source) => return Err(Error::Bind { addr, source }),
        }
    }
    Err(Error::Bind {
        addr,
        source: last.unwrap_or_else(|| std::io::Error::other("no free port")),
    })
}

/// One UDP socket per core on the same address (SO_REUSEPORT): each gets its own receive
/// thread, and a single loop caps a server at one core's worth of queries.
fn bind_udp_group(addr: SocketAddr) -> std::io::Result<Vec<std::net::UdpSocket>> {
    let count = udp_sockets_per_address();
    let first = reuseport_udp(addr)?;
    let local = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..count {
        sockets.push(reuseport_udp(local)?);
    }
    Ok(sockets)
}

/// UDP sockets (and receive loops) per `--bind` address: one per core, at most 8.
pub fn udp_sockets_per_address() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 8))
}

fn reuseport_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}
