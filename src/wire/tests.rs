//! Framing: heads both ways, strictness, chunked input at every split point.

use super::chunked::Decoded;
use super::*;

fn req(text: &str) -> Result<(bool, RequestHead), WireError> {
    let mut h = RequestHead::default();
    let done = parse_request(text.as_bytes(), &mut h)?;
    Ok((done, h))
}

#[test]
fn request_head_fields() {
    let text = "POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer sk-1 \r\nContent-Length: 12\r\nX-Request-Id: abc\r\nExpect: 100-continue\r\n\r\nbody";
    let (done, h) = req(text).unwrap();
    assert!(done);
    assert_eq!(h.len, text.len() - 4);
    assert_eq!(h.method, Method::Post);
    assert_eq!(h.route_path(text.as_bytes()), b"/v1/chat/completions");
    assert_eq!(h.api_key.unwrap().of(text.as_bytes()), b"sk-1");
    assert_eq!(h.request_id.unwrap().of(text.as_bytes()), b"abc");
    assert_eq!(h.body, BodyKind::Length(12));
    assert!(h.keep_alive && h.expect_continue);
}

#[test]
fn request_partial_and_errors() {
    assert!(!req("POST / HTTP/1.1\r\nHost: a\r\n").unwrap().0);
    assert!(req("GARBAGE\r\n\r\n").is_err());
    assert!(req("POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n").is_err());
    assert!(req("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n").is_err());
    assert!(req("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n").is_err());
    assert!(
        req("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n").is_err()
    );
    let many: String = (0..120).map(|i| format!("h{i}: v\r\n")).collect();
    assert_eq!(
        req(&format!("GET / HTTP/1.1\r\n{many}\r\n")).unwrap_err(),
        WireError::TooManyHeaders
    );
}

#[test]
fn connection_semantics() {
    let (_, h) = req("GET / HTTP/1.0\r\n\r\n").unwrap();
    assert!(!h.keep_alive);
    let (_, h) = req("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
    assert!(h.keep_alive);
    let t = "GET / HTTP/1.1\r\nConnection: close, X-Foo\r\nX-Foo: 1\r\n\r\n";
    let (_, h) = req(t).unwrap();
    assert!(!h.keep_alive);
    assert!(h.is_hop_or_replaced(t.as_bytes(), b"x-foo"));
    assert!(h.is_hop_or_replaced(t.as_bytes(), b"Host"));
    assert!(!h.is_hop_or_replaced(t.as_bytes(), b"content-type"));
}

#[test]
fn response_framing() {
    let mut h = ResponseHead::default();
    let t =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert!(parse_response(t, &mut h, false).unwrap());
    assert_eq!(h.body, BodyKind::Chunked);
    assert!(h.event_stream && h.keep_alive);
    let t = b"HTTP/1.1 429 Too Many\r\nRetry-After: 7\r\nContent-Length: 5\r\n\r\n";
    assert!(parse_response(t, &mut h, false).unwrap());
    assert_eq!(h.status, 429);
    assert_eq!(h.retry_after.unwrap().of(t), b"7");
    assert_eq!(h.body, BodyKind::Length(5));
    let t = b"HTTP/1.1 200 OK\r\n\r\n";
    assert!(parse_response(t, &mut h, false).unwrap());
    assert_eq!(h.body, BodyKind::UntilClose);
    assert!(!h.keep_alive);
    let t = b"HTTP/1.1 204 No Content\r\n\r\n";
    assert!(parse_response(t, &mut h, false).unwrap());
    assert_eq!(h.body, BodyKind::None);
}

fn decode_all(input: &[u8], split: usize) -> Result<(Vec<u8>, Decoded), WireError> {
    let mut d = ChunkedDecoder::new();
    let mut out = Vec::new();
    let mut last = Decoded {
        consumed: 0,
        done: false,
    };
    let mut pos = 0;
    while pos < input.len() {
        let end = (pos + split).min(input.len());
        let part = &input[pos..end];
        last = d.decode(part, |r| out.extend_from_slice(&part[r]))?;
        pos += last.consumed;
        if last.done {
            break;
        }
    }
    Ok((out, last))
}

#[test]
fn chunked_any_split() {
    let body = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nTrailer: x\r\n\r\n";
    for split in 1..body.len() + 1 {
        let (out, d) = decode_all(body, split).unwrap();
        assert_eq!(out, b"hello, world", "split {split}");
        assert!(d.done, "split {split}");
    }
}

#[test]
fn chunked_errors() {
    assert!(decode_all(b"zz\r\n", 4).is_err());
    assert!(decode_all(b"3\r\nabcX\r\n", 16).is_err());
    assert!(decode_all(b"ffffffffffffffffff\r\n", 64).is_err());
    assert!(decode_all(b"\r\n", 4).is_err());
}

#[test]
fn chunked_stops_at_end() {
    let body = b"1\r\na\r\n0\r\n\r\nNEXT";
    let mut d = ChunkedDecoder::new();
    let r = d.decode(body, |_| {}).unwrap();
    assert!(r.done);
    assert_eq!(&body[r.consumed..], b"NEXT");
}

#[test]
fn dechunk_compacts() {
    let mut buf = b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n".to_vec();
    let mut d = ChunkedDecoder::new();
    let mut w = 0;
    let r = dechunk_in_place(&mut d, &mut buf, 0, &mut w).unwrap();
    assert!(r.done);
    assert_eq!(&buf[..w], b"hello, world");
}

/// Every span a parsed response head carries, read as the relay reads them.
fn touch_response_spans(h: &ResponseHead, buf: &[u8]) {
    let _ = h.reason.of(buf);
    for hp in &h.headers {
        let _ = (hp.name.of(buf), hp.value.of(buf));
    }
    if let Some(r) = h.retry_after {
        let _ = r.of(buf);
    }
}

#[test]
fn status_line_without_usable_reason_is_an_empty_span() {
    // httparse answers these with a static "" that does not point into the buffer.
    let cases: [&[u8]; 6] = [
        b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200\nContent-Length: 2\n\nok",
        b"HTTP/1.1 200 \xe9\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 \xe9\nContent-Length: 2\n\nok",
        b"HTTP/1.1 200 \r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK \xff\xfe\r\nContent-Length: 0\r\n\r\n",
    ];
    for t in cases {
        let mut h = ResponseHead::default();
        assert!(parse_response(t, &mut h, false).unwrap());
        assert_eq!(h.status, 200);
        assert!((h.reason.end as usize) <= t.len());
        touch_response_spans(&h, t);
    }
}

#[test]
fn ambiguous_upstream_responses_are_refused() {
    let cases: [&[u8]; 6] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"HTTP/1.1 600 Nope\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 099 Nope\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 000 Nope\r\nContent-Length: 0\r\n\r\n",
    ];
    for t in cases {
        let mut h = ResponseHead::default();
        assert!(
            parse_response(t, &mut h, false).is_err(),
            "{}",
            String::from_utf8_lossy(t)
        );
    }
    let mut h = ResponseHead::default();
    let t = b"HTTP/1.1 599 Edge\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n";
    assert!(parse_response(t, &mut h, false).unwrap());
    assert_eq!(h.body, BodyKind::Length(5));
}

#[test]
fn strict_request_framing() {
    // Bare LF line ends anywhere in the head.
    assert!(req("POST / HTTP/1.1\nHost: a\n\n").is_err());
    assert!(req("POST / HTTP/1.1\r\nHost: a\n\r\n").is_err());
    // Transfer-Encoding on HTTP/1.0.
    assert!(matches!(
        req("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
        Err(WireError::Malformed(_))
    ));
    // Codings other than one plain chunked: 501 material.
    for te in [
        "gzip, chunked",
        "chunked, chunked",
        "identity",
        "gzip",
        "chunked;q=1",
    ] {
        let t = format!("POST / HTTP/1.1\r\nTransfer-Encoding: {te}\r\n\r\n");
        assert_eq!(req(&t).unwrap_err(), WireError::UnsupportedCoding, "{te}");
    }
    let t = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(req(t).unwrap_err(), WireError::UnsupportedCoding);
    let (_, h) = req("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n").unwrap();
    assert_eq!(h.body, BodyKind::Chunked);
}

#[test]
fn chunk_lines_are_crlf_only_and_sizes_hex_only() {
    for bad in [
        &b"5\nhello\r\n0\r\n\r\n"[..],
        b"5\r\nhello\n0\r\n\r\n",
        b"5;ext\nhello\r\n0\r\n\r\n",
        b"18 zz\r\n",
        b"5 x\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhello\r\n0\r\n\n",
        b"5\r\nhello\r\n0\r\nTrailer: x\n\r\n",
        b"5\r\nhelloXY0\r\n\r\n",
    ] {
        for split in 1..=bad.len() {
            assert!(
                decode_all(bad, split).is_err(),
                "{} split {split}",
                String::from_utf8_lossy(bad)
            );
        }
    }
    let good = b"5 ;a=b\r\nhello\r\n5\t\r\nworld\r\n0\r\nT: 1\r\nU: 2\r\n\r\n";
    for split in 1..=good.len() {
        let (out, d) = decode_all(good, split).unwrap();
        assert_eq!(out, b"helloworld");
        assert!(d.done);
    }
}

#[test]
fn chunk_header_before() {
    let mut buf = vec![0u8; 32];
    let s = write_chunk_header_before(&mut buf, CHUNK_HEADROOM, 300);
    assert_eq!(&buf[s..CHUNK_HEADROOM], b"12c\r\n");
    let s = write_chunk_header_before(&mut buf, CHUNK_HEADROOM, usize::MAX);
    assert_eq!(s, 0);
}
