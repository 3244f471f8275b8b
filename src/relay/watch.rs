//! Waiting on the upstream while watching the client: a client that hangs up while the relay
//! waits for a response head or an idle stream is noticed within a second, and the upstream
//! connection is closed with the request.
//!
//! Owns: the per-connection [`ClientWatch`] switch and [`upstream_wait`]; what a readable
//! socket means is the client stream's to say (`ClientStream::peer_state`: a peek for TCP, the
//! session's verdict on the record for TLS). Must not: hold a buffer while watching (the watch
//! is a readiness poll, droppable at any time), or drop the upstream future at the grace
//! checkpoint (that could lose bytes an in-flight read took).

use std::time::Duration;

use crate::deadline::{DeadlineSet, Layer};
use crate::tls_server::{ClientStream, PeerState};

/// How long an upstream may take before the relay starts watching the client for a hang-up.
/// Fast responses never pay for the watch; slow ones are checked well within a second.
pub const WATCH_GRACE: Duration = Duration::from_millis(250);

/// Watches the client connection while the relay waits on an upstream.
pub struct ClientWatch {
    /// Off once the client sent more bytes during this request (it is clearly alive, and its
    /// readiness would fire at once for the rest of the request).
    enabled: bool,
}

impl ClientWatch {
    pub fn new() -> ClientWatch {
        ClientWatch { enabled: true }
    }

    /// A new request: watch again.
    pub fn rearm(&mut self) {
        self.enabled = true;
    }
}

/// What waiting on the upstream came to.
pub enum Waited<T> {
    Done(T),
    Timeout(Layer),
    ClientGone,
}

/// Wait for `fut` (an upstream read or readiness) under the deadline. If it takes longer than
/// [`WATCH_GRACE`], also wait for the client socket to become readable: EOF or an error there
/// means the client left, and the caller drops the upstream connection.
///
/// Under TLS the watch looks at the TCP socket below the session: a close shows there as it
/// does for plain HTTP; TLS records (or bytes the session already holds) mean the client is
/// alive, as pipelined bytes do.
pub async fn upstream_wait<F: std::future::Future, S: ClientStream>(
    fut: F,
    deadline: &DeadlineSet,
    client: &mut S,
    watch: &mut ClientWatch,
) -> Waited<F::Output> {
    let mut fut = std::pin::pin!(fut);
    if client.has_buffered() {
        watch.enabled = false;
    }
    if watch.enabled {
        // From the reading taken when the wait's deadline was armed: an older start only
        // begins the watch sooner.
        deadline.checkpoint(deadline.recent() + WATCH_GRACE);
        if let Ok(r) = deadline.race(&mut fut).await {
            // The checkpoint must not outlive this wait: the next phase's race would
            // mistake it for its own deadline.
            deadline.resume();
            return Waited::Done(r);
        }
        if deadline.is_due() {
            return Waited::Timeout(deadline.layer());
        }
        deadline.resume();
        while watch.enabled {
            monoio::select! {
                biased;
                r = &mut fut => return Waited::Done(r),
                _ = deadline.expired() => return Waited::Timeout(deadline.layer()),
                _ = client.socket().readable(false) => match client.peer_state() {
                    PeerState::Gone => return Waited::ClientGone,
                    PeerState::SentData => watch.enabled = false,
                    PeerState::Idle => {}
                },
            }
        }
    }
    match deadline.race(fut).await {
        Ok(r) => Waited::Done(r),
        Err(layer) => Waited::Timeout(layer),
    }
}

pub fn is_cancelled(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ECANCELED) || matches!(e.kind(), std::io::ErrorKind::Interrupted)
}
