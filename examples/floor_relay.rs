//! The floor: the least a monoio relay can do for the lab's non-streaming request, on the same
//! ring flags as ringway. It exists to measure how much of ringway's CPU per request is the
//! runtime and the kernel (which this pays too) and how much is ringway's own work (which this
//! skips: no auth, no routing, no deadlines, no usage accounting, no pool, Content-Length only).
//!
//! It must not be used as a relay: it trusts every byte it reads, serves one upstream, and
//! answers nothing itself. One worker, one upstream connection per client connection.
//!
//!     cargo build --release --example floor_relay
//!     RINGWAY_BIN=target/release/examples/floor_relay python3 ../shared/lab/peerbench.py nginx ringway
//!
//! Listens on 127.0.0.1:18104 and forwards to 127.0.0.1:18080 (the lab's ports); arguments are
//! ignored so the lab can start it where it starts ringway.

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};

const LISTEN: &str = "127.0.0.1:18104";
const UPSTREAM: &str = "127.0.0.1:18080";

fn main() {
    let mut ring = io_uring::IoUring::builder();
    ring.setup_coop_taskrun()
        .setup_single_issuer()
        .setup_defer_taskrun();
    let mut runtime = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(4096)
        .uring_builder(ring)
        .enable_timer()
        .build()
        .expect("io_uring runtime");
    runtime.block_on(async {
        let listener = TcpListener::bind(LISTEN).expect("bind 127.0.0.1:18104");
        while let Ok((client, _)) = listener.accept().await {
            monoio::spawn(async move {
                let _ = serve(client).await;
            });
        }
    });
}

/// One client connection: request in, forwarded whole, response back, until either side closes.
async fn serve(mut client: TcpStream) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    let mut upstream = TcpStream::connect(UPSTREAM).await?;
    upstream.set_nodelay(true)?;
    let mut request = Vec::with_capacity(16 * 1024);
    let mut response = Vec::with_capacity(16 * 1024);
    loop {
        request = match read_message(&mut client, request, false).await? {
            Some(buf) => buf,
            None => return Ok(()),
        };
        let (res, buf) = upstream.write_all(request).await;
        res?;
        request = buf;
        response = match read_message(&mut upstream, response, true).await? {
            Some(buf) => buf,
            None => return Ok(()),
        };
        let (res, buf) = client.write_all(response).await;
        res?;
        response = buf;
    }
}

/// Reads one message (head plus Content-Length body) into `buf`, from empty. `None`: the peer
/// closed before a whole message arrived.
async fn read_message(
    stream: &mut TcpStream,
    mut buf: Vec<u8>,
    is_response: bool,
) -> std::io::Result<Option<Vec<u8>>> {
    buf.clear();
    let mut want: Option<usize> = None;
    loop {
        if let Some(total) = want {
            if buf.len() >= total {
                return Ok(Some(buf));
            }
        } else if let Some(total) = message_len(&buf, is_response) {
            want = Some(total);
            continue;
        }
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        let start = buf.len();
        let (res, back) = stream.read(buf.slice_mut(start..)).await;
        buf = back.into_inner();
        if res? == 0 {
            return Ok(None);
        }
    }
}

/// Head length plus Content-Length once the whole head is in `buf`.
fn message_len(buf: &[u8], is_response: bool) -> Option<usize> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let head_len = if is_response {
        match httparse::Response::new(&mut headers).parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            _ => return None,
        }
    } else {
        match httparse::Request::new(&mut headers).parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            _ => return None,
        }
    };
    let body = headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    Some(head_len + body)
}
