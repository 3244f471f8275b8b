//! Upstream connections: name resolution, TCP connect, TLS, and the per-worker idle pool.
//!
//! Owns: every upstream socket. A socket is either lent to exactly one request as an
//! [`UpConn`] (counted in `upstream_connections_active`) or parked in this worker's [`Pool`]
//! (counted in `upstream_connections_idle`); dropping an `UpConn` closes it. The relay calls
//! [`Pool::put_back`] only after it has read a response to its end on a keep-alive connection
//! with nothing after it; [`Pool::take`] lends a parked connection only if its socket has
//! nothing to read (no stray bytes, no close), so bytes an upstream sent after a response can
//! never become another request's response.
//!
//! It also owns connecting: a request asks [`Upstreams::checkout`] for a parked connection and
//! [`Upstreams::connect`] for a new one (resolve, TCP under `connect`, TLS under
//! `tls_handshake`), and each channel's per-worker state lives in one [`ChannelRuntime`].
//!
//! Must not: block the worker (name lookups run on a small blocking pool with a per-worker
//! cache; IP literals never look anything up), share pools across workers, or keep an idle
//! connection past `pool_idle`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::BufResult;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::ServerName;

use crate::config::{ChannelConfig, Scheme};
use crate::deadline::{DeadlineSet, Layer};
use crate::health::Health;
use crate::monitor::{bump, drop_one, Monitor};
use crate::route::{Channel, Router};

pub type TlsStream = monoio_rustls::ClientTlsStream<TcpStream>;

/// A connected upstream socket, plain or TLS.
pub enum Stream {
    Plain(TcpStream),
    /// The TLS session over its socket, and that socket's fd (the session does not expose it),
    /// for the pool's quiet check.
    Tls(Box<TlsStream>, RawFd),
}

impl Stream {
    #[inline]
    pub async fn read<T: IoBufMut>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s, _) => s.read(buf).await,
        }
    }

    #[inline]
    pub async fn write_all<T: IoBuf + 'static>(&mut self, buf: T) -> BufResult<usize, T> {
        match self {
            Stream::Plain(s) => s.write_all(buf).await,
            Stream::Tls(s, _) => s.write_all(buf).await,
        }
    }

    /// Wait until a read would find bytes, without lending a buffer (plain TCP only; TLS may
    /// hold decrypted bytes already, so it reports ready at once).
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.readable(true).await,
            Stream::Tls(..) => Ok(()),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(..))
    }

    fn raw_fd(&self) -> RawFd {
        match self {
            Stream::Plain(s) => s.as_raw_fd(),
            Stream::Tls(_, fd) => *fd,
        }
    }

    /// True when the socket has nothing to read: no stray bytes and no close from the
    /// upstream. A parked connection that fails this is closed, never lent. One non-blocking
    /// peek; a TLS layer's own buffer is covered by the relay, which pools a connection only
    /// when the read that ended its response left room in its buffer (see `relay`).
    pub fn is_quiet(&self) -> bool {
        let mut byte = 0u8;
        // SAFETY: a valid open fd owned by this stream and a 1-byte buffer we own; MSG_PEEK
        // leaves any data in the socket.
        let n = unsafe {
            libc::recv(
                self.raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
    }
}

/// Which pool slot an endpoint uses; channels that share (scheme, host, port) share a slot.
pub type PoolSlot = usize;

/// An upstream connection lent to one request. Dropping it closes the socket.
pub struct UpConn {
    pub stream: Stream,
    pub slot: PoolSlot,
    pub reused: bool,
    monitor: &'static Monitor,
    worker: usize,
}

impl Drop for UpConn {
    fn drop(&mut self) {
        drop_one(&self.monitor.workers[self.worker].upstream_active);
    }
}

struct Idle {
    stream: Stream,
    since: Instant,
}

/// This worker's idle upstream connections, LIFO per slot so the warmest is reused first.
/// Shared by every config generation of the worker: a slot is one upstream endpoint for the
/// life of the process, so a reload keeps the parked connections of unchanged upstreams.
pub struct Pool {
    slots: RefCell<Vec<Vec<Idle>>>,
    /// Per slot: does the newest config still use it? A connection of a removed upstream is
    /// closed instead of parked.
    live: RefCell<Vec<bool>>,
    max_idle_per_slot: usize,
    pool_idle: Duration,
    monitor: &'static Monitor,
    worker: usize,
}

impl Pool {
    pub fn new(
        slots: usize,
        max_idle_per_slot: usize,
        pool_idle: Duration,
        monitor: &'static Monitor,
        worker: usize,
    ) -> Pool {
        Pool {
            slots: RefCell::new((0..slots).map(|_| Vec::new()).collect()),
            live: RefCell::new(vec![true; slots]),
            max_idle_per_slot,
            pool_idle,
            monitor,
            worker,
        }
    }

    pub fn stats(&self) -> &crate::monitor::WorkerStats {
        &self.monitor.workers[self.worker]
    }

    /// Wrap a socket as a lent connection (counts it active).
    pub fn lend(&self, stream: Stream, slot: PoolSlot, reused: bool) -> UpConn {
        let s = self.stats();
        crate::monitor::bump(&s.upstream_active);
        if reused {
            bump(&s.upstream_reused);
        }
        UpConn {
            stream,
            slot,
            reused,
            monitor: self.monitor,
            worker: self.worker,
        }
    }

    /// The warmest idle connection for `slot`, dropping any that sat too long, or that has
    /// something to read (stray bytes after its last response, or the upstream's close).
    pub fn take(&self, slot: PoolSlot, now: Instant) -> Option<UpConn> {
        let mut slots = self.slots.borrow_mut();
        let list = slots.get_mut(slot)?;
        while let Some(idle) = list.pop() {
            drop_one(&self.stats().upstream_idle);
            if now.saturating_duration_since(idle.since) >= self.pool_idle {
                continue;
            }
            if !idle.stream.is_quiet() {
                bump(&self.stats().upstream_unclean);
                continue;
            }
            drop(slots);
            return Some(self.lend(idle.stream, slot, true));
        }
        None
    }

    /// Park a connection whose response was read to its end on a keep-alive connection.
    pub fn put_back(&self, conn: UpConn, now: Instant) {
        let slot = conn.slot;
        if !self.live.borrow().get(slot).copied().unwrap_or(false) {
            return;
        }
        let stream = into_stream(conn);
        let mut slots = self.slots.borrow_mut();
        if let Some(list) = slots.get_mut(slot) {
            if list.len() < self.max_idle_per_slot {
                list.push(Idle { stream, since: now });
                bump(&self.stats().upstream_idle);
            }
        }
    }

    /// Close idle connections older than `pool_idle`; the worker's janitor calls this.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut closed = 0;
        for list in self.slots.borrow_mut().iter_mut() {
            let before = list.len();
            list.retain(|i| now.saturating_duration_since(i.since) < self.pool_idle);
            closed += before - list.len();
        }
        for _ in 0..closed {
            drop_one(&self.stats().upstream_idle);
        }
        closed
    }

    pub fn idle_count(&self) -> usize {
        self.slots.borrow().iter().map(Vec::len).sum()
    }

    /// A reload's endpoints: `slots` in all (never fewer than before), of which `live` are
    /// used. Idle connections of the others are closed now.
    fn set_live(&self, slots: usize, live: &[bool]) {
        let mut lists = self.slots.borrow_mut();
        let mut flags = self.live.borrow_mut();
        while lists.len() < slots {
            lists.push(Vec::new());
            flags.push(true);
        }
        for (i, list) in lists.iter_mut().enumerate() {
            let used = live.get(i).copied().unwrap_or(false);
            flags[i] = used;
            if !used {
                for _ in list.drain(..) {
                    drop_one(&self.stats().upstream_idle);
                }
            }
        }
    }
}

fn into_stream(conn: UpConn) -> Stream {
    // Move the stream out while still running UpConn's Drop for the active gauge.
    let mut conn = std::mem::ManuallyDrop::new(conn);
    // SAFETY: `conn` is never used again after these reads and its Drop is run by hand below,
    // so each field is moved out exactly once.
    let stream = unsafe { std::ptr::read(&conn.stream) };
    let monitor = unsafe { std::ptr::read(&conn.monitor) };
    drop_one(&monitor.workers[conn.worker].upstream_active);
    let _ = &mut conn;
    stream
}

/// A worker's state for one channel: where its idle connections park, the TLS connector that
/// verifies it, and which of its keys goes next.
pub struct ChannelRuntime {
    pub slot: PoolSlot,
    tls: Rc<monoio_rustls::TlsConnector>,
    key_cursor: Cell<usize>,
    /// The key [`ChannelRuntime::next_key`] gave last, so `forward` knows which key an
    /// upstream refused.
    last_key: Cell<usize>,
    /// This channel's index, for its health.
    index: usize,
    health: std::sync::Arc<Health>,
}

impl ChannelRuntime {
    /// The index of the key for the next request, rotating through `keys` of them and
    /// skipping keys the upstream refused (see [`Health::pick_key`]).
    #[inline]
    pub fn next_key(&self, keys: usize) -> usize {
        let i = self.key_cursor.get();
        let key = self.health.pick_key(self.index, keys, i);
        // Go on after the key given, so rotation stays even around a key that is out.
        self.key_cursor
            .set(i.wrapping_add(1 + (key + keys.max(1) - i % keys.max(1)) % keys.max(1)));
        self.last_key.set(key);
        key
    }

    /// The key the last [`ChannelRuntime::next_key`] gave.
    #[inline]
    pub fn last_key(&self) -> usize {
        self.last_key.get()
    }
}

/// Each channel's runtime, its pool slot found in (or added to) `endpoints`.
fn channel_runtimes(
    router: &Router,
    tls: TlsConnectors,
    endpoints: &RefCell<Vec<Endpoint>>,
    seed: u64,
) -> Vec<ChannelRuntime> {
    let own: Vec<Rc<monoio_rustls::TlsConnector>> =
        tls.connectors.into_iter().map(Rc::new).collect();
    let mut endpoints = endpoints.borrow_mut();
    router
        .channels
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let connector = tls.by_channel.get(i).copied().unwrap_or(0);
            let key = Endpoint {
                scheme: c.cfg.scheme,
                host: c.cfg.host.clone(),
                port: c.cfg.port,
                ca_pem: c.cfg.ca.as_ref().map(|ca| ca.pem.clone()),
            };
            let slot = match endpoints.iter().position(|e| *e == key) {
                Some(s) => s,
                None => {
                    endpoints.push(key);
                    endpoints.len() - 1
                }
            };
            ChannelRuntime {
                slot,
                tls: own[connector].clone(),
                key_cursor: Cell::new(seed as usize + i),
                last_key: Cell::new(0),
                index: i,
                health: router.health.clone(),
            }
        })
        .collect()
}

/// Why no upstream connection could be had.
#[derive(Debug)]
pub enum ConnectError {
    Failed(String),
    Timeout(Layer),
}

/// Connections to no more idle upstreams than this per (scheme, host, port, trust) are kept.
const MAX_IDLE_PER_UPSTREAM: usize = 1024;
/// How long a resolved host name is trusted.
const DNS_TTL: Duration = Duration::from_secs(30);

/// Where a pool slot's connections go: connections are interchangeable only within one.
/// The trust roots are part of it: a connection verified against one channel's `ca_file` must
/// never be lent to a channel that trusts different roots.
#[derive(Clone, PartialEq, Eq)]
struct Endpoint {
    scheme: Scheme,
    host: String,
    port: u16,
    /// The channel's `ca_file` contents; `None`: the default roots.
    ca_pem: Option<Vec<u8>>,
}

/// One worker's upstream side for one config generation: the idle pool and the name cache
/// (both shared with the worker's other generations), and each channel's runtime.
pub struct Upstreams {
    pub pool: Rc<Pool>,
    resolver: Rc<Resolver>,
    /// Every endpoint this worker has had, by pool slot (shared across generations; it grows
    /// only with upstreams a reload adds).
    endpoints: Rc<RefCell<Vec<Endpoint>>>,
    channels: Vec<ChannelRuntime>,
}

impl Upstreams {
    pub fn new(
        router: &Router,
        tls: TlsConnectors,
        pool_idle: Duration,
        monitor: &'static Monitor,
        worker: usize,
        seed: u64,
    ) -> Upstreams {
        let endpoints = Rc::new(RefCell::new(Vec::new()));
        let channels = channel_runtimes(router, tls, &endpoints, seed);
        let slots = endpoints.borrow().len();
        Upstreams {
            pool: Rc::new(Pool::new(
                slots,
                MAX_IDLE_PER_UPSTREAM,
                pool_idle,
                monitor,
                worker,
            )),
            resolver: Rc::new(Resolver::new(DNS_TTL)),
            endpoints,
            channels,
        }
    }

    /// The upstream side for a reloaded config: the same pool, name cache and endpoints, so
    /// an unchanged upstream keeps its parked connections; those of removed upstreams close.
    pub fn renewed(&self, router: &Router, tls: TlsConnectors, seed: u64) -> Upstreams {
        let channels = channel_runtimes(router, tls, &self.endpoints, seed);
        let slots = self.endpoints.borrow().len();
        let mut live = vec![false; slots];
        for c in &channels {
            live[c.slot] = true;
        }
        self.pool.set_live(slots, &live);
        Upstreams {
            pool: self.pool.clone(),
            resolver: self.resolver.clone(),
            endpoints: self.endpoints.clone(),
            channels,
        }
    }

    pub fn channel(&self, index: usize) -> &ChannelRuntime {
        &self.channels[index]
    }

    /// A parked connection to `channel`'s upstream that is fit to be lent, if any.
    #[inline]
    pub fn checkout(&self, channel: usize, now: Instant) -> Option<UpConn> {
        self.pool.take(self.channels[channel].slot, now)
    }

    /// A new connection to `channel` (config index `index`): resolve, TCP under `connect`,
    /// TLS under `tls_handshake`, each raced against `deadline` (clamped by the request's
    /// total).
    pub async fn connect(
        &self,
        channel: &Channel,
        index: usize,
        deadline: &DeadlineSet,
    ) -> Result<UpConn, ConnectError> {
        let cfg = &channel.cfg;
        let t = channel.timeouts;
        deadline.arm(Layer::Connect, t[Layer::Connect]);
        let addrs = deadline
            .race(self.resolver.resolve(&cfg.host, cfg.port))
            .await
            .map_err(ConnectError::Timeout)?
            .map_err(|e| ConnectError::Failed(format!("cannot resolve {}: {e}", cfg.host)))?;
        let tcp = deadline
            .race(connect_tcp(&addrs))
            .await
            .map_err(ConnectError::Timeout)?
            .map_err(|e| {
                ConnectError::Failed(format!("cannot connect to {}:{}: {e}", cfg.host, cfg.port))
            })?;
        let rt = &self.channels[index];
        let stream = match cfg.scheme {
            Scheme::Http => Stream::Plain(tcp),
            Scheme::Https => {
                deadline.arm(Layer::TlsHandshake, t[Layer::TlsHandshake]);
                deadline
                    .race(tls_handshake(&rt.tls, &cfg.host, tcp))
                    .await
                    .map_err(ConnectError::Timeout)?
                    .map_err(|e| {
                        ConnectError::Failed(format!("TLS handshake with {} failed: {e}", cfg.host))
                    })?
            }
        };
        bump(&self.pool.stats().upstream_connects);
        Ok(self.pool.lend(stream, rt.slot, false))
    }
}

/// Resolved addresses and when they were looked up.
type CachedAddrs = (Vec<SocketAddr>, Instant);

/// Per-worker DNS cache; lookups run on the runtime's blocking pool so they never stall IO.
pub struct Resolver {
    cache: RefCell<HashMap<(String, u16), CachedAddrs>>,
    ttl: Duration,
}

impl Resolver {
    pub fn new(ttl: Duration) -> Resolver {
        Resolver {
            cache: RefCell::new(HashMap::new()),
            ttl,
        }
    }

    pub async fn resolve(&self, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        if let Ok(ip) = host.parse::<std::net::IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let key = (host.to_owned(), port);
        if let Some((addrs, at)) = self.cache.borrow().get(&key) {
            if at.elapsed() < self.ttl {
                return Ok(addrs.clone());
            }
        }
        let lookup = key.clone();
        let result = monoio::spawn_blocking(move || {
            (lookup.0.as_str(), lookup.1)
                .to_socket_addrs()
                .map(|a| a.collect::<Vec<_>>())
        })
        .await
        .map_err(|_| io::Error::other("name lookup was cancelled"))??;
        if result.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{host} has no addresses"),
            ));
        }
        self.cache
            .borrow_mut()
            .insert(key, (result.clone(), Instant::now()));
        Ok(result)
    }
}

/// Open a TCP connection to the first address that accepts.
pub async fn connect_tcp(addrs: &[SocketAddr]) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address to connect to");
    for addr in addrs {
        match TcpStream::connect_addr(*addr).await {
            Ok(s) => {
                // Heads and small SSE chunks must not wait for Nagle.
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

pub async fn tls_handshake(
    tls: &Rc<monoio_rustls::TlsConnector>,
    host: &str,
    tcp: TcpStream,
) -> io::Result<Stream> {
    let fd = tcp.as_raw_fd();
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
    let s = tls
        .connect(name, tcp)
        .await
        .map_err(|e| io::Error::other(e.to_string()))?;
    Ok(Stream::Tls(Box::new(s), fd))
}

/// The TLS client connectors for a config: the default one (webpki roots only) and one per
/// distinct channel `ca_file` (webpki roots plus that file's certificates). Built once at start;
/// each worker wraps every connector in its own `Rc`.
#[derive(Clone)]
pub struct TlsConnectors {
    /// Index 0 is the default connector.
    pub connectors: Vec<monoio_rustls::TlsConnector>,
    /// For each channel (config order), its index into `connectors`.
    pub by_channel: Vec<usize>,
}

impl TlsConnectors {
    pub fn for_channels(channels: &[ChannelConfig]) -> io::Result<TlsConnectors> {
        let mut connectors = vec![tls_connector(None)?];
        let mut ca_paths: Vec<&std::path::Path> = Vec::new();
        let mut by_channel = Vec::with_capacity(channels.len());
        for c in channels {
            let Some(ca) = &c.ca else {
                by_channel.push(0);
                continue;
            };
            let index = match ca_paths.iter().position(|p| *p == ca.path.as_path()) {
                Some(i) => i + 1,
                None => {
                    let connector = tls_connector(Some(&ca.pem)).map_err(|e| {
                        io::Error::new(e.kind(), format!("ca_file {}: {e}", ca.path.display()))
                    })?;
                    connectors.push(connector);
                    ca_paths.push(&ca.path);
                    connectors.len() - 1
                }
            };
            by_channel.push(index);
        }
        Ok(TlsConnectors {
            connectors,
            by_channel,
        })
    }
}

/// The TLS connector for the workers: [`tls_client_config`] for monoio.
pub fn tls_connector(extra_roots_pem: Option<&[u8]>) -> io::Result<monoio_rustls::TlsConnector> {
    Ok(monoio_rustls::TlsConnector::from(tls_client_config(
        extra_roots_pem,
    )?))
}

/// The rustls client configuration: webpki roots, plus extra PEM roots for private upstreams.
pub fn tls_client_config(extra_roots_pem: Option<&[u8]>) -> io::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = extra_roots_pem {
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
            let cert =
                cert.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            roots
                .add(cert)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| io::Error::other(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
