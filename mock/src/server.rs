//! The listener and the connections: binding, the TLS server config, the accept loop, one
//! thread per accepted connection, the per-connection [`Wire`] (plain TCP, or rustls over it),
//! the request/response loop of a connection, and the exact connection counters ([`Shared`]).
//!
//! Must not: decide what to answer (that is `behaviours`), or parse request bytes itself (that
//! is `request`). Every exit path of a connection closes its socket before the open count
//! drops, so `open_connections` stays exact.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};

use crate::behaviours::respond;
use crate::bodies::error_kind;
use crate::reply::Reply;
use crate::request::{read_request, Fail, Inbox};
use crate::MockStats;

/// How often blocked reads and writes wake up to notice `stop`.
pub(crate) const IO_TICK: Duration = Duration::from_millis(250);
/// Accept latency is set by poll readiness, not this; it only bounds how late `stop` is seen.
const ACCEPT_TICK: Duration = Duration::from_millis(100);
const CONN_STACK: usize = 256 * 1024;

pub(crate) fn tls_server_config(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
) -> io::Result<Arc<ServerConfig>> {
    let invalid = |what: &str, e: &dyn std::fmt::Display| {
        io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {e}"))
    };
    let chain = CertificateDer::pem_slice_iter(cert_chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid("certificate chain", &e))?;
    if chain.is_empty() {
        return Err(invalid("certificate chain", &"no PEM certificate found"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| invalid("private key", &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("TLS versions", &e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| invalid("certificate and key", &e))?;
    Ok(Arc::new(config))
}

pub(crate) fn bind(listen: &str) -> io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(listen)?;
    // Non-blocking so a poll that raced with a vanished connection cannot wedge the acceptor.
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub(crate) stop: AtomicBool,
    pub(crate) open: AtomicU64,
    pub(crate) total: AtomicU64,
    pub(crate) requests: AtomicU64,
    /// `mock-fail-N-...`: requests seen so far per model name (at most
    /// [`MAX_COUNTED_MODELS`] names; further names are not counted and never fail).
    pub(crate) fail_counts: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// The Responses API's stored responses (bounded: `responses::MAX_STORED`).
    pub(crate) responses: std::sync::Mutex<crate::responses::ResponseStore>,
}

/// Bounds the per-model counters of `mock-fail-N-...`, whatever names a client sends.
pub(crate) const MAX_COUNTED_MODELS: usize = 1024;

impl Shared {
    /// Counts one more request for `model` and returns how many came before it (`None` when
    /// the table is full and `model` is not in it).
    pub(crate) fn count_model(&self, model: &str) -> Option<u64> {
        let mut counts = self.fail_counts.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = counts.get_mut(model) {
            *n += 1;
            return Some(*n - 1);
        }
        if counts.len() >= MAX_COUNTED_MODELS {
            return None;
        }
        counts.insert(model.to_string(), 1);
        Some(0)
    }
}

impl Shared {
    pub(crate) fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    pub(crate) fn stats(&self) -> MockStats {
        MockStats {
            open_connections: self.open.load(Ordering::SeqCst),
            total_connections: self.total.load(Ordering::SeqCst),
            requests: self.requests.load(Ordering::SeqCst),
        }
    }
}

pub(crate) fn accept_loop(
    listener: &TcpListener,
    shared: &Arc<Shared>,
    tls: Option<&Arc<ServerConfig>>,
) {
    while !shared.stopping() {
        if poll_fd(listener.as_raw_fd(), libc::POLLIN, ACCEPT_TICK) == 0 {
            continue;
        }
        match listener.accept() {
            Ok((stream, _)) => serve_in_thread(stream, shared, tls),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::Interrupted
                        | io::ErrorKind::ConnectionAborted
                ) => {}
            // EMFILE and friends persist while poll keeps reporting readiness: back off
            // instead of spinning.
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn serve_in_thread(stream: TcpStream, shared: &Arc<Shared>, tls: Option<&Arc<ServerConfig>>) {
    shared.total.fetch_add(1, Ordering::SeqCst);
    shared.open.fetch_add(1, Ordering::SeqCst);
    let mut conn = OpenConn {
        stream: Some(Wire {
            tcp: stream,
            tls: None,
        }),
        shared: Arc::clone(shared),
    };
    // Only the TLS session is set up here; its handshake runs on the connection's own thread,
    // inside the first read.
    if let (Some(config), Some(wire)) = (tls, conn.stream.as_mut()) {
        match ServerConnection::new(Arc::clone(config)) {
            Ok(session) => wire.tls = Some(RefCell::new(session)),
            // Dropping `conn` closes the socket and keeps the count exact.
            Err(_) => return,
        }
    }
    // If the thread cannot be spawned the closure is dropped, and `conn` with it, which closes
    // the socket and keeps the count exact.
    let _ = thread::Builder::new()
        .name("mock-conn".into())
        .stack_size(CONN_STACK)
        .spawn(move || conn.serve());
}

/// Owns an accepted socket so that `open_connections` drops only after the fd is closed, on
/// every exit path.
struct OpenConn {
    stream: Option<Wire>,
    shared: Arc<Shared>,
}

/// An accepted connection: the socket, and the TLS session over it in TLS mode. Reads and
/// writes go through the session when there is one (rustls' blocking `Stream` over `&TcpStream`,
/// so the same handler serves both); socket-level faults (reset, hang-up polling, half-close)
/// act on `tcp` directly. Used by one thread only, hence the `RefCell`.
pub(crate) struct Wire {
    pub(crate) tcp: TcpStream,
    tls: Option<RefCell<ServerConnection>>,
}

impl Wire {
    /// Plaintext read; `Ok(0)` at end of stream. Timeouts surface as `WouldBlock`/`TimedOut`
    /// with any partial TLS record kept in the session, so callers simply retry.
    pub(crate) fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut tcp = &self.tcp;
        match &self.tls {
            None => tcp.read(buf),
            Some(tls) => rustls::Stream::new(&mut *tls.borrow_mut(), &mut tcp).read(buf),
        }
    }

    /// Plaintext write. Over TLS the bytes are accepted into the session and sent as far as
    /// the socket takes them; [`Wire::flush`] pushes out the rest.
    pub(crate) fn write(&self, buf: &[u8]) -> io::Result<usize> {
        let mut tcp = &self.tcp;
        match &self.tls {
            None => tcp.write(buf),
            Some(tls) => rustls::Stream::new(&mut *tls.borrow_mut(), &mut tcp).write(buf),
        }
    }

    pub(crate) fn flush(&self) -> io::Result<()> {
        let mut tcp = &self.tcp;
        match &self.tls {
            None => Ok(()),
            Some(tls) => rustls::Stream::new(&mut *tls.borrow_mut(), &mut tcp).flush(),
        }
    }

    /// Over TLS, a best-effort close_notify before an orderly close, so the peer sees a clean
    /// end of the session rather than a truncation. A no-op on plain TCP.
    fn close_notify(&self) {
        if let Some(tls) = &self.tls {
            tls.borrow_mut().send_close_notify();
            let _ = self.flush();
        }
    }
}

impl OpenConn {
    fn serve(self) {
        if let Some(stream) = &self.stream {
            serve_connection(stream, &self.shared);
        }
    }
}

impl Drop for OpenConn {
    fn drop(&mut self) {
        drop(self.stream.take());
        self.shared.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What the connection does once a response has been handled.
pub(crate) enum Outcome {
    KeepAlive,
    Close,
    /// Close with SO_LINGER 0 so the peer gets a RST instead of a FIN.
    Reset,
}

fn serve_connection(stream: &Wire, shared: &Shared) {
    let tcp = &stream.tcp;
    // Accepted sockets must block: the timeouts below exist only to notice `stop`.
    if tcp.set_nonblocking(false).is_err()
        || tcp.set_read_timeout(Some(IO_TICK)).is_err()
        || tcp.set_write_timeout(Some(IO_TICK)).is_err()
    {
        return;
    }
    // Streaming tests measure per-event arrival, which Nagle would batch.
    let _ = tcp.set_nodelay(true);
    let mut inbox = Inbox {
        stream,
        shared,
        buf: Vec::new(),
    };
    loop {
        let request = match read_request(&mut inbox) {
            Err(Fail::Gone) => return,
            other => other,
        };
        let n = shared.requests.fetch_add(1, Ordering::SeqCst) + 1;
        let request = match request {
            Ok(request) => request,
            Err(Fail::Gone) => return,
            Err(Fail::Reject(status, message)) => {
                let reply = Reply {
                    stream,
                    shared,
                    n,
                    close: true,
                };
                let (kind, code) = error_kind(status);
                if reply.error(status, message, kind, code, &[]).is_ok() {
                    close_gently(stream);
                }
                return;
            }
        };
        let reply = Reply {
            stream,
            shared,
            n,
            close: !request.keep_alive,
        };
        match respond(reply, &request) {
            Ok(Outcome::KeepAlive) => {}
            Ok(Outcome::Close) => {
                stream.close_notify();
                return;
            }
            Err(_) => return,
            Ok(Outcome::Reset) => {
                let _ = set_linger_zero(tcp);
                return;
            }
        }
    }
}

/// Closing with unread request bytes still queued makes the kernel send RST, which can destroy
/// the error response before the peer reads it; half-close and drain for a moment first.
fn close_gently(wire: &Wire) {
    wire.close_notify();
    // Draining the raw socket is fine over TLS too: nothing more is answered.
    let mut stream = &wire.tcp;
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(100)));
    let deadline = Instant::now() + Duration::from_secs(1);
    let mut sink = [0u8; 4096];
    let mut drained = 0usize;
    while Instant::now() < deadline && drained < 1 << 20 {
        match stream.read(&mut sink) {
            Ok(0) => break,
            Ok(n) => drained += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

fn set_linger_zero(stream: &TcpStream) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd owned by `stream`; option value is a properly sized `linger`.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Waits up to `timeout` for `events` on `fd` and returns what was reported; 0 on timeout or
/// interruption, so callers simply loop against their own deadline.
pub(crate) fn poll_fd(fd: RawFd, events: libc::c_short, timeout: Duration) -> libc::c_short {
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd and a count of 1.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc > 0 {
        return pfd.revents;
    }
    if rc < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
        // A persistent poll failure must not turn callers' loops into spins.
        thread::sleep(timeout);
    }
    0
}

/// POLLRDHUP fires on the peer's FIN without being confused by pipelined bytes still unread.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) const PEER_HANGUP: libc::c_short = libc::POLLRDHUP;
/// Elsewhere only a full hang-up (POLLHUP/POLLERR, always reported) is noticed.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) const PEER_HANGUP: libc::c_short = 0;
