//! Chunked bodies both ways: decoding (`ChunkedDecoder::decode`, `step`, `dechunk_in_place`) must
//! not depend on where reads end, and the relay's re-framing (`write_chunk_header_before` +
//! `LAST_CHUNK`) must decode back to the same bytes.

use ringway::internals::wire::{self, ChunkedDecoder, CHUNK_HEADROOM, LAST_CHUNK};

use super::{split_seed, Splits};

/// What decoding a whole body got: the data, whether the body ended, how many input bytes were
/// consumed, and whether it failed.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub data: Vec<u8>,
    pub done: bool,
    pub consumed: usize,
    pub error: bool,
}

/// `decode` fed `pieces` one after the other, as reads arrive.
pub fn decode_pieces(pieces: &[&[u8]]) -> Outcome {
    let mut d = ChunkedDecoder::new();
    let mut out = Outcome {
        data: Vec::new(),
        done: false,
        consumed: 0,
        error: false,
    };
    for part in pieces {
        let mut prev_end = 0;
        let r = d.decode(part, |r| {
            assert!(
                prev_end <= r.start && r.start < r.end && r.end <= part.len(),
                "data range {r:?} after {prev_end} in a {}-byte input",
                part.len()
            );
            prev_end = r.end;
            out.data.extend_from_slice(&part[r]);
        });
        match r {
            Ok(dc) => {
                assert!(
                    dc.consumed <= part.len(),
                    "consumed {dc:?} of {}",
                    part.len()
                );
                assert!(
                    dc.done || dc.consumed == part.len(),
                    "stopped early without the end: {dc:?} of {}",
                    part.len()
                );
                assert!(prev_end <= dc.consumed);
                out.consumed += dc.consumed;
                if dc.done {
                    out.done = true;
                    break;
                }
            }
            Err(_) => {
                // Where it failed is not compared: only that it failed, and the data before.
                out.error = true;
                out.consumed = 0;
                break;
            }
        }
    }
    out
}

/// `step` called one range at a time over the whole input (what `dechunk_in_place` does).
fn step_all(input: &[u8]) -> Outcome {
    let mut d = ChunkedDecoder::new();
    let mut out = Outcome {
        data: Vec::new(),
        done: false,
        consumed: 0,
        error: false,
    };
    let mut pos = 0;
    loop {
        match d.step(&input[pos..]) {
            Ok(s) => {
                assert!(s.consumed <= input.len() - pos);
                if let Some(r) = &s.data {
                    assert!(r.end == s.consumed && r.start <= r.end, "{s:?}");
                    out.data
                        .extend_from_slice(&input[pos + r.start..pos + r.end]);
                }
                pos += s.consumed;
                if s.done {
                    out.done = true;
                    break;
                }
                if pos >= input.len() || s.consumed == 0 {
                    break;
                }
            }
            Err(_) => {
                out.error = true;
                break;
            }
        }
    }
    out.consumed = if out.error { 0 } else { pos };
    out
}

/// The relay's own pattern: each read lands behind `CHUNK_HEADROOM`, is de-chunked in place
/// there, and the data is re-framed as one client chunk (plus the last chunk at the end).
/// Returns (data per read, the re-framed client bytes, done, error, extra bytes after the end).
pub struct Relayed {
    pub reads: Vec<Vec<u8>>,
    pub framed: Vec<u8>,
    pub done: bool,
    pub error: bool,
    pub extra: bool,
}

pub fn relay_dechunk(pieces: &[&[u8]]) -> Relayed {
    let mut d = ChunkedDecoder::new();
    let mut out = Relayed {
        reads: Vec::new(),
        framed: Vec::new(),
        done: false,
        error: false,
        extra: false,
    };
    for part in pieces {
        let mut ubuf = vec![0u8; CHUNK_HEADROOM];
        ubuf.extend_from_slice(part);
        let mut write_at = CHUNK_HEADROOM;
        let r = wire::dechunk_in_place(&mut d, &mut ubuf, CHUNK_HEADROOM, &mut write_at);
        // On bad framing the relay still sends what was decoded before it, then stops.
        assert!(CHUNK_HEADROOM <= write_at && write_at <= ubuf.len());
        match r {
            Ok(dc) => {
                assert!(dc.consumed <= ubuf.len() && write_at <= dc.consumed);
                assert!(
                    dc.done || dc.consumed == ubuf.len(),
                    "{dc:?} of {}",
                    ubuf.len()
                );
                out.extra = dc.consumed < ubuf.len();
                out.done = dc.done;
            }
            Err(_) => out.error = true,
        }
        let data_len = write_at - CHUNK_HEADROOM;
        out.reads.push(ubuf[CHUNK_HEADROOM..write_at].to_vec());
        ubuf.truncate(write_at);
        let mut start = CHUNK_HEADROOM;
        if data_len > 0 {
            start = wire::write_chunk_header_before(&mut ubuf, CHUNK_HEADROOM, data_len);
            ubuf.extend_from_slice(b"\r\n");
        }
        if out.done {
            ubuf.extend_from_slice(LAST_CHUNK);
        }
        out.framed.extend_from_slice(&ubuf[start..]);
        if out.done || out.error {
            break;
        }
    }
    out
}

/// Input: 4 seed bytes choosing the read boundaries, then a chunked body.
pub fn chunked_decode(data: &[u8]) {
    let (seed, body) = split_seed(data, 4);
    let pieces = Splits::new(seed).pieces(body);
    let split = decode_pieces(&pieces);
    let whole = decode_pieces(&[body]);
    assert_eq!(split, whole, "decode depends on where reads end");
    let bytewise: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(
        decode_pieces(&bytewise),
        whole,
        "byte-at-a-time decode differs"
    );
    let stepped = step_all(body);
    assert_eq!(stepped, whole, "step and decode differ");
    assert!(whole.consumed <= body.len());
    if !whole.error {
        assert!(whole.data.len() <= whole.consumed);
    }

    let relayed = relay_dechunk(&pieces);
    assert_eq!(relayed.done, whole.done);
    assert_eq!(relayed.error, whole.error);
    let data: Vec<u8> = relayed.reads.concat();
    assert_eq!(data, whole.data, "dechunk_in_place differs from decode");
    // Bytes after the end within the same read are seen; ones in a later read cannot be.
    if relayed.extra {
        assert!(whole.done && whole.consumed < body.len());
    }
}

/// Both ways: (1) arbitrary bytes, cut into chunks, framed the way the relay frames them, decode
/// back to themselves; (2) an arbitrary chunked body de-chunked and re-framed read by read
/// decodes to what the body decoded to.
pub fn chunked_encode(data: &[u8]) {
    let (seed, body) = split_seed(data, 4);

    // (1) encode then decode.
    let mut framed = Vec::new();
    for piece in Splits::new(seed).pieces(body) {
        let mut buf = vec![0u8; CHUNK_HEADROOM];
        buf.extend_from_slice(piece);
        let start = wire::write_chunk_header_before(&mut buf, CHUNK_HEADROOM, piece.len());
        assert!(start < CHUNK_HEADROOM);
        let header = &buf[start..CHUNK_HEADROOM];
        let hex = &header[..header.len() - 2];
        assert!(header.ends_with(b"\r\n") && !hex.is_empty());
        assert!(hex.len() == 1 || hex[0] != b'0', "leading zero in {hex:?}");
        let n = usize::from_str_radix(std::str::from_utf8(hex).unwrap(), 16).unwrap();
        assert_eq!(n, piece.len());
        buf.extend_from_slice(b"\r\n");
        framed.extend_from_slice(&buf[start..]);
    }
    framed.extend_from_slice(LAST_CHUNK);
    let back = decode_pieces(&[&framed]);
    assert!(back.done && !back.error, "{back:?}");
    assert_eq!(back.consumed, framed.len());
    assert_eq!(back.data, body);

    // Any length, not only the ones a buffer can hold, gets the shortest hex header.
    if seed.len() == 4 {
        let n = u32::from_le_bytes([seed[0], seed[1], seed[2], seed[3]]) as usize;
        let n = n.wrapping_mul(n | 1).wrapping_add(n);
        let mut buf = [0u8; CHUNK_HEADROOM];
        let start = wire::write_chunk_header_before(&mut buf, CHUNK_HEADROOM, n);
        let hex = std::str::from_utf8(&buf[start..CHUNK_HEADROOM - 2]).unwrap();
        assert_eq!(hex, format!("{n:x}"));
    }

    // (2) decode, re-frame, decode.
    let pieces = Splits::new(seed).pieces(body);
    let upstream = decode_pieces(&pieces);
    let relayed = relay_dechunk(&pieces);
    let client = decode_pieces(&[&relayed.framed]);
    assert!(
        !client.error,
        "the relay's framing does not decode: {client:?}"
    );
    assert_eq!(client.consumed, relayed.framed.len());
    assert_eq!(client.done, upstream.done);
    assert_eq!(client.data, relayed.reads.concat());
    assert_eq!(client.data, upstream.data);
}
