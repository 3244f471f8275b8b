//! TLS for clients (`[server.tls]`): the rustls server configuration and the stream a TLS
//! client connection is served through.
//!
//! Key components:
//! - [`server_config`]: a certificate chain and key made into a `rustls::ServerConfig` (TLS
//!   1.2 and 1.3, ALPN `http/1.1` only). The config loader calls it, so a key that does not
//!   match its certificate is refused with the file, line and key at fault.
//! - [`TlsClient`]: a rustls server session over a monoio `TcpStream`, speaking monoio's
//!   owned-buffer traits (read, write, cancelable read) so the relay serves it with the same
//!   code as a plain socket. It keeps the socket reachable ([`ClientStream::socket`]): the
//!   relay's readiness waits and its client watch look at the raw TCP socket.
//! - [`ClientStream`]: what the relay needs of a client connection, implemented by
//!   `TcpStream` (plain HTTP, unchanged) and [`TlsClient`]. The relay is generic over it, so
//!   the plain path is compiled as before, with no dispatch.
//!
//! Why not `monoio-rustls`' server stream: it hides the socket (no readiness wait, no peek
//! for the client watch, no way to tell decrypted bytes waiting inside the session), and a
//! dropped read loses its buffer for good (the next read panics), while the relay drops and
//! cancels reads on an idle connection to give its buffer back.
//!
//! Error handling: a handshake or record error is an `io::Error` (the connection closes); a
//! client that ends without `close_notify` reads as end of stream, like a TCP close.
//! Must not: log, or know about the relay's phases; every read and write is bounded by the
//! caller's deadline, and a future dropped mid-read costs only this connection.

use std::io::{self, Read, Write};
use std::sync::Arc;

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut, RawBuf};
use monoio::io::{
    AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, CancelHandle, CancelableAsyncReadRent,
};
use monoio::net::TcpStream;
use monoio::BufResult;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};

/// How much TLS data one socket read takes (a whole maximum-size record and then some).
const TLS_READ_SIZE: usize = 17 * 1024;

/// The rustls server configuration for `certs` (leaf first) and `key`: TLS 1.2 and 1.3, no
/// client certificates, ALPN `http/1.1` (the relay speaks HTTP/1.1 only, so a client that
/// offers only `h2` is refused in the handshake rather than misunderstood after it).
/// Fails when the key cannot be used or does not belong to the leaf certificate.
pub fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What the relay needs of a client connection beyond reading and writing.
pub trait ClientStream: AsyncReadRent + AsyncWriteRent + CancelableAsyncReadRent + 'static {
    /// The TCP socket under the stream: readiness waits and the client watch's peek use it.
    fn socket(&self) -> &TcpStream;
    /// Bytes the stream already took from the socket that a read would return without
    /// waiting (a TLS session's decrypted or not yet decrypted data). Always false for TCP.
    fn has_buffered(&self) -> bool;
    /// The socket reported readable while the relay waits on the upstream: did the client
    /// leave, send more, or was it nothing? Never waits.
    fn peer_state(&mut self) -> PeerState;
    /// Whether the stream says goodbye before the socket closes (TLS: `close_notify`, so a
    /// body delimited by the close is not taken for a truncated one).
    const SAYS_GOODBYE: bool;
}

impl ClientStream for TcpStream {
    #[inline(always)]
    fn socket(&self) -> &TcpStream {
        self
    }

    #[inline(always)]
    fn has_buffered(&self) -> bool {
        false
    }

    /// Peeks one byte without consuming it: pipelined bytes stay for the next request.
    fn peer_state(&mut self) -> PeerState {
        let mut byte = 0u8;
        match recv_now(self, std::slice::from_mut(&mut byte), libc::MSG_PEEK) {
            Ok(0) => PeerState::Gone,
            Ok(_) => PeerState::SentData,
            Err(e) if would_block(&e) => PeerState::Idle,
            Err(_) => PeerState::Gone,
        }
    }

    const SAYS_GOODBYE: bool = false;
}

/// What the client did while the relay waited on the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerState {
    /// Nothing that counts (a spurious wake, part of a TLS record, a TLS key update).
    Idle,
    /// More request bytes: the client is alive.
    SentData,
    /// A close, a reset, a TLS `close_notify` or fatal alert.
    Gone,
}

/// One `recv` on the socket that never waits (the socket just reported readable).
fn recv_now(tcp: &TcpStream, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid fd and a buffer we own for the call's length.
    let n = unsafe {
        libc::recv(
            tcp.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            flags | libc::MSG_DONTWAIT,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// A client connection after its TLS handshake.
pub struct TlsClient {
    tcp: TcpStream,
    session: ServerConnection,
    /// TLS bytes read from the socket and not yet given to the session: `tls_in[tls_at..]`.
    /// Empty (no capacity) while the connection idles without a read.
    tls_in: Vec<u8>,
    tls_at: usize,
    /// TLS bytes the session produced, on their way to the socket. Reused.
    tls_out: Vec<u8>,
}

/// Handshake with a client on `tcp`. The caller bounds it with a deadline (dropping the future
/// closes the socket with it).
pub async fn accept(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<TlsClient> {
    let session = ServerConnection::new(config).map_err(io::Error::other)?;
    let mut s = TlsClient {
        tcp,
        session,
        tls_in: Vec::new(),
        tls_at: 0,
        tls_out: Vec::new(),
    };
    while s.session.is_handshaking() {
        if s.session.wants_write() {
            s.send_pending().await?;
        } else if !s.take_in(None).await? {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "client closed during the TLS handshake",
            ));
        }
    }
    // The last handshake flight (and TLS 1.3 session tickets).
    s.send_pending().await?;
    Ok(s)
}

impl TlsClient {
    /// Gives buffered TLS bytes to the session until it has plaintext or they run out; reads
    /// the socket first when none are buffered. Ok(false): the client closed the socket.
    /// An ECANCELED read error is passed up as is (see `cancelable_read`).
    async fn take_in(&mut self, cancel: Option<&CancelHandle>) -> io::Result<bool> {
        if self.tls_at == self.tls_in.len() {
            let mut buf = std::mem::take(&mut self.tls_in);
            buf.clear();
            if buf.capacity() < TLS_READ_SIZE {
                buf.reserve_exact(TLS_READ_SIZE);
            }
            self.tls_at = 0;
            let (r, b) = match cancel {
                Some(c) => self.tcp.cancelable_read(buf, c.clone()).await,
                None => self.tcp.read(buf).await,
            };
            self.tls_in = b;
            if r? == 0 {
                // End of stream: the session decides whether that was a clean close.
                self.session.read_tls(&mut io::empty())?;
                self.process().await?;
                return Ok(false);
            }
        }
        while self.tls_at < self.tls_in.len() {
            let n = self.session.read_tls(&mut &self.tls_in[self.tls_at..])?;
            self.tls_at += n;
            if self.process().await? > 0 {
                break;
            }
        }
        Ok(true)
    }

    /// Decrypts what the session was given; answers what the peer's records ask for (alerts,
    /// key updates). Returns the plaintext bytes now readable.
    async fn process(&mut self) -> io::Result<usize> {
        match self.session.process_new_packets() {
            Ok(state) => {
                if self.session.wants_write() {
                    self.send_pending().await?;
                }
                Ok(state.plaintext_bytes_to_read())
            }
            Err(e) => {
                // Tell the client why (the alert rustls queued), then fail.
                let _ = self.send_pending().await;
                Err(io::Error::new(io::ErrorKind::InvalidData, e))
            }
        }
    }

    /// Writes everything the session has queued to the socket.
    async fn send_pending(&mut self) -> io::Result<()> {
        while self.session.wants_write() {
            let mut out = std::mem::take(&mut self.tls_out);
            out.clear();
            self.session.write_tls(&mut out)?;
            let (r, b) = self.tcp.write_all(out).await;
            self.tls_out = b;
            r?;
        }
        Ok(())
    }

    /// Reads plaintext into `dst`; 0 at the end of the stream.
    async fn read_plain(
        &mut self,
        dst: &mut [u8],
        cancel: Option<&CancelHandle>,
    ) -> io::Result<usize> {
        loop {
            match self.session.reader().read(dst) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The socket closed without close_notify: as a TCP close.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            if !self.take_in(cancel).await? {
                // The socket closed: whatever plaintext is left, then the end.
                return match self.session.reader().read(dst) {
                    Ok(n) => Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
                    Err(e) => Err(e),
                };
            }
        }
    }

    /// Encrypts all of `data` and writes it to the socket.
    async fn write_plain(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let n = self.session.writer().write(data)?;
            data = &data[n..];
            self.send_pending().await?;
        }
        Ok(())
    }
}

impl ClientStream for TlsClient {
    #[inline]
    fn socket(&self) -> &TcpStream {
        &self.tcp
    }

    fn has_buffered(&self) -> bool {
        if self.tls_at < self.tls_in.len() {
            return true;
        }
        // After the handshake the session stops wanting TLS data only when it holds
        // plaintext or the client's close_notify: either way a read returns at once.
        !self.session.wants_read()
    }

    /// TLS 1.3 hides a record's type inside its encryption, so the bytes are read and given
    /// to the session (they stay buffered for the next read): a `close_notify` or an error
    /// means the client left, plaintext that it sent more. Anything the session wants to send
    /// in reply waits for the next write.
    fn peer_state(&mut self) -> PeerState {
        if self.tls_in.capacity() - self.tls_in.len() < 1024 {
            if self.tls_at == self.tls_in.len() {
                self.tls_in.clear();
                self.tls_at = 0;
            }
            self.tls_in.reserve(TLS_READ_SIZE);
        }
        let len = self.tls_in.len();
        let spare = self.tls_in.spare_capacity_mut();
        // SAFETY: `recv` writes only initialised bytes into the spare capacity, and only `n`
        // of them are taken into the vector's length below.
        let spare =
            unsafe { std::slice::from_raw_parts_mut(spare.as_mut_ptr().cast(), spare.len()) };
        match recv_now(&self.tcp, spare, 0) {
            Ok(0) => return PeerState::Gone,
            // SAFETY: `n` bytes were written by `recv`.
            Ok(n) => unsafe { self.tls_in.set_len(len + n) },
            Err(e) if would_block(&e) => return PeerState::Idle,
            Err(_) => return PeerState::Gone,
        }
        while self.tls_at < self.tls_in.len() {
            match self.session.read_tls(&mut &self.tls_in[self.tls_at..]) {
                Ok(n) => self.tls_at += n,
                Err(_) => return PeerState::Gone,
            }
            match self.session.process_new_packets() {
                Ok(state) if state.peer_has_closed() => return PeerState::Gone,
                Ok(state) if state.plaintext_bytes_to_read() > 0 => return PeerState::SentData,
                Ok(_) => {}
                Err(_) => return PeerState::Gone,
            }
        }
        PeerState::Idle
    }

    const SAYS_GOODBYE: bool = true;
}

impl AsyncReadRent for TlsClient {
    async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        // SAFETY: the buffer's writable part, owned by `buf` for the whole call.
        let dst = unsafe { std::slice::from_raw_parts_mut(buf.write_ptr(), buf.bytes_total()) };
        match self.read_plain(dst, None).await {
            Ok(n) => {
                // SAFETY: `n` bytes were written into `dst` by the session's reader.
                unsafe { buf.set_init(n) };
                (Ok(n), buf)
            }
            Err(e) => (Err(e), buf),
        }
    }

    async fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        // SAFETY: the first iovec of `buf`, owned by `buf` for the whole call.
        let n = match unsafe { RawBuf::new_from_iovec_mut(&mut buf) } {
            Some(raw) => self.read(raw).await.0,
            None => Ok(0),
        };
        if let Ok(n) = n {
            // SAFETY: `n` bytes were written into the first iovec.
            unsafe { buf.set_init(n) };
        }
        (n, buf)
    }
}

impl CancelableAsyncReadRent for TlsClient {
    /// A cancel that lands while the socket read is pending ends the read with ECANCELED and
    /// nothing lost; TLS bytes that arrived with it stay buffered for the next read. An idle
    /// connection's TLS buffers are given back with the cancel.
    async fn cancelable_read<T: IoBufMut>(
        &mut self,
        mut buf: T,
        c: CancelHandle,
    ) -> BufResult<usize, T> {
        // SAFETY: as in `read`.
        let dst = unsafe { std::slice::from_raw_parts_mut(buf.write_ptr(), buf.bytes_total()) };
        match self.read_plain(dst, Some(&c)).await {
            Ok(n) => {
                // SAFETY: as in `read`.
                unsafe { buf.set_init(n) };
                (Ok(n), buf)
            }
            Err(e) => {
                // An idle connection holds no TLS buffer of its own (the session's state is
                // rustls'): both are taken again by the next read and write.
                if self.tls_at == self.tls_in.len() {
                    self.tls_in = Vec::new();
                    self.tls_at = 0;
                }
                self.tls_out = Vec::new();
                (Err(e), buf)
            }
        }
    }

    async fn cancelable_readv<T: IoVecBufMut>(
        &mut self,
        mut buf: T,
        c: CancelHandle,
    ) -> BufResult<usize, T> {
        // SAFETY: as in `readv`.
        let n = match unsafe { RawBuf::new_from_iovec_mut(&mut buf) } {
            Some(raw) => self.cancelable_read(raw, c).await.0,
            None => Ok(0),
        };
        if let Ok(n) = n {
            // SAFETY: as in `readv`.
            unsafe { buf.set_init(n) };
        }
        (n, buf)
    }
}

impl AsyncWriteRent for TlsClient {
    /// Takes the whole buffer: it is encrypted and written before this returns.
    async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // SAFETY: the buffer's initialised bytes, owned by `buf` for the whole call.
        let data = unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) };
        match self.write_plain(data).await {
            Ok(()) => (Ok(data.len()), buf),
            Err(e) => (Err(e), buf),
        }
    }

    async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
        // SAFETY: the first iovec of `buf`, owned by `buf` for the whole call.
        let n = match unsafe { RawBuf::new_from_iovec(&buf) } {
            Some(raw) => self.write(raw).await.0,
            None => Ok(0),
        };
        (n, buf)
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.send_pending().await
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        self.session.send_close_notify();
        self.send_pending().await?;
        self.tcp.shutdown().await
    }
}
