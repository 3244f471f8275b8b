//! Request- and response-head parsers: every span a parsed head carries is used the way the relay
//! uses it, and the heads the relay would write from it must parse again.

use ringway::internals::wire::{self, BodyKind, RequestHead, ResponseHead, Span};

/// A span must lie inside the parsed head (which lies inside the buffer); then it is read.
fn check_span<'a>(buf: &'a [u8], head_len: usize, span: Span, what: &str) -> &'a [u8] {
    assert!(
        span.start <= span.end && span.end as usize <= head_len && head_len <= buf.len(),
        "{what} span {}..{} outside the head (head len {head_len}, buffer len {})",
        span.start,
        span.end,
        buf.len()
    );
    assert_eq!(span.len(), (span.end - span.start) as usize);
    span.of(buf)
}

/// A few prefixes of a complete head: each must parse as "incomplete", never as an error or as a
/// different complete head, or the relay's answer would depend on how TCP cut the bytes.
fn prefixes(head_len: usize) -> impl Iterator<Item = usize> {
    let mut cuts = [
        head_len.saturating_sub(1),
        head_len.saturating_sub(2),
        head_len.saturating_sub(3),
        head_len / 2,
        head_len / 3,
        1,
    ];
    cuts.sort_unstable();
    let mut last = usize::MAX;
    cuts.into_iter().filter(move |&k| {
        let fresh = k != last && k < head_len;
        last = k;
        fresh
    })
}

// ---- request heads -----------------------------------------------------------------------

/// A head that used every field, to prove a reused `RequestHead` carries nothing over.
const DIRTY_REQUEST: &[u8] = b"POST /dirty?q HTTP/1.1\r\nAuthorization: Bearer sk-dirty\r\nX-Request-Id: dirty\r\nConnection: close, x-dirty\r\nExpect: 100-continue\r\nContent-Length: 9\r\n\r\n";

pub fn request_head(data: &[u8]) {
    let mut head = RequestHead::default();
    let fresh = wire::parse_request(data, &mut head);
    if let Ok(true) = fresh {
        check_request(data, &head);
        // The relay reuses one RequestHead per connection.
        let mut warm = RequestHead::default();
        assert_eq!(wire::parse_request(DIRTY_REQUEST, &mut warm), Ok(true));
        assert_eq!(wire::parse_request(data, &mut warm), Ok(true));
        assert_eq!(
            format!("{warm:?}"),
            format!("{head:?}"),
            "reused head differs"
        );
        for k in prefixes(head.len) {
            let mut h = RequestHead::default();
            assert_eq!(
                wire::parse_request(&data[..k], &mut h),
                Ok(false),
                "prefix of {k} bytes of a complete {}-byte request head",
                head.len
            );
        }
    }
}

fn check_request(buf: &[u8], head: &RequestHead) {
    let hl = head.len;
    assert!(hl > 0 && hl <= buf.len(), "head len {hl} of {}", buf.len());
    let path = check_span(buf, hl, head.path, "path");
    let route = head.route_path(buf);
    assert!(path.starts_with(route) && !route.contains(&b'?'));
    for h in &head.headers {
        let name = check_span(buf, hl, h.name, "header name");
        assert!(!name.is_empty(), "empty header name");
        let value = check_span(buf, hl, h.value, "header value");
        assert!(
            !value.starts_with(b" ") && !value.ends_with(b" "),
            "untrimmed value"
        );
        let _ = head.is_hop_or_replaced(buf, name);
    }
    if let Some(k) = head.api_key {
        check_span(buf, hl, k, "api key");
    }
    if let Some(id) = head.request_id {
        let id = check_span(buf, hl, id, "request id");
        // It is echoed in a response header: it must not be able to break the head.
        assert!(!id.is_empty() && id.iter().all(|&b| (0x21..0x7f).contains(&b)));
    }
    for t in &head.connection_tokens {
        let t = check_span(buf, hl, *t, "connection token");
        assert!(head.is_hop_or_replaced(buf, t));
    }
    match head.body {
        BodyKind::Length(n) => assert!(n > 0),
        BodyKind::None | BodyKind::Chunked => {}
        BodyKind::UntilClose => panic!("a request body cannot run until close"),
    }

    // The upstream head the relay writes from it (path and the forwarded headers) must parse.
    let mut out = Vec::with_capacity(hl + 64);
    out.extend_from_slice(b"POST ");
    out.extend_from_slice(path);
    out.extend_from_slice(b" HTTP/1.1\r\nhost: upstream\r\n");
    for h in &head.headers {
        let name = h.name.of(buf);
        if !head.is_hop_or_replaced(buf, name) {
            wire::write_header(&mut out, name, h.value.of(buf));
        }
    }
    out.extend_from_slice(b"content-length: 0\r\n\r\n");
    // (httparse with room for the two added headers: the head may already hold the maximum.)
    let mut headers = [httparse::EMPTY_HEADER; wire::MAX_HEADERS + 8];
    let mut again = httparse::Request::new(&mut headers);
    match again.parse(&out) {
        Ok(httparse::Status::Complete(n)) => {
            assert_eq!(n, out.len());
            assert_eq!(again.path.map(str::as_bytes), Some(path));
        }
        other => panic!(
            "forwarded head does not parse ({other:?}): {:?}",
            String::from_utf8_lossy(&out)
        ),
    }
}

// ---- response heads ----------------------------------------------------------------------

const DIRTY_RESPONSE: &[u8] = b"HTTP/1.1 429 Slow Down\r\nRetry-After: 7\r\nContent-Type: text/event-stream\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n";

pub fn response_head(data: &[u8]) {
    for request_was_head in [false, true] {
        let mut head = ResponseHead::default();
        let fresh = wire::parse_response(data, &mut head, request_was_head);
        if let Ok(true) = fresh {
            check_response(data, &head, request_was_head);
            let mut warm = ResponseHead::default();
            assert_eq!(
                wire::parse_response(DIRTY_RESPONSE, &mut warm, false),
                Ok(true)
            );
            assert_eq!(
                wire::parse_response(data, &mut warm, request_was_head),
                Ok(true)
            );
            assert_eq!(
                format!("{warm:?}"),
                format!("{head:?}"),
                "reused head differs"
            );
            for k in prefixes(head.len) {
                let mut h = ResponseHead::default();
                assert_eq!(
                    wire::parse_response(&data[..k], &mut h, request_was_head),
                    Ok(false),
                    "prefix of {k} bytes of a complete {}-byte response head",
                    head.len
                );
            }
        }
    }
    // The relay skips interim (1xx) heads and parses what follows from the same buffer.
    let mut rest = data;
    for _ in 0..8 {
        let mut head = ResponseHead::default();
        match wire::parse_response(rest, &mut head, false) {
            Ok(true) if (100..200).contains(&head.status) && head.status != 101 => {
                check_response(rest, &head, false);
                rest = &rest[head.len..];
            }
            Ok(true) => {
                check_response(rest, &head, false);
                break;
            }
            _ => break,
        }
    }
}

fn check_response(buf: &[u8], head: &ResponseHead, request_was_head: bool) {
    let hl = head.len;
    assert!(hl > 0 && hl <= buf.len(), "head len {hl} of {}", buf.len());
    assert!(head.status <= 999);
    // Exactly what the relay does when it writes the client head.
    let reason = check_span(buf, hl, head.reason, "reason");
    for h in &head.headers {
        let name = check_span(buf, hl, h.name, "header name");
        assert!(!name.is_empty(), "empty header name");
        check_span(buf, hl, h.value, "header value");
    }
    if let Some(r) = head.retry_after {
        check_span(buf, hl, r, "retry-after");
    }
    let bodiless = request_was_head
        || (100..200).contains(&head.status)
        || head.status == 204
        || head.status == 304;
    match head.body {
        BodyKind::None => {}
        BodyKind::Length(n) => assert!(n > 0 && !bodiless),
        BodyKind::Chunked => assert!(!bodiless),
        BodyKind::UntilClose => assert!(!bodiless && !head.keep_alive),
    }
    if bodiless {
        assert_eq!(head.body, BodyKind::None);
    }

    // The client head the relay writes from it must parse, with the same status.
    let mut out = Vec::with_capacity(hl + 64);
    out.extend_from_slice(b"HTTP/1.1 ");
    wire::push_u64(&mut out, head.status as u64);
    out.push(b' ');
    if reason.is_empty() {
        out.extend_from_slice(wire::reason_phrase(head.status).as_bytes());
    } else {
        out.extend_from_slice(reason);
    }
    out.extend_from_slice(b"\r\n");
    for h in &head.headers {
        let name = h.name.of(buf);
        if wire::is_hop_by_hop(name) || name.eq_ignore_ascii_case(b"content-length") {
            continue;
        }
        if name.eq_ignore_ascii_case(b"x-request-id") {
            wire::write_header(&mut out, b"x-upstream-request-id", h.value.of(buf));
            continue;
        }
        wire::write_header(&mut out, name, h.value.of(buf));
    }
    out.extend_from_slice(b"x-request-id: fuzz\r\ncontent-length: 0\r\n\r\n");
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(&out) {
        Ok(httparse::Status::Complete(n)) => {
            assert_eq!(n, out.len());
            assert_eq!(resp.code, Some(head.status), "client status differs");
        }
        other => panic!(
            "the client head the relay would write does not parse ({other:?}): {:?}",
            String::from_utf8_lossy(&out)
        ),
    }
}
