//! Writing HTTP/1.1: status lines with their standard reason phrases, header lines, and chunk
//! frames written in place in front of the data.

/// The standard reason phrase (RFC 9110 names), for heads ringway writes itself and for
/// upstream heads that came without one.
pub fn reason_phrase(status: u16) -> &'static str {
    known_reason_phrase(status).unwrap_or("Unknown")
}

pub fn known_reason_phrase(status: u16) -> Option<&'static str> {
    Some(match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => return None,
    })
}

/// Append `HTTP/1.1 <status> <reason>\r\n`.
pub fn write_status_line(out: &mut Vec<u8>, status: u16) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, status as u64);
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\n");
}

pub fn write_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

pub fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Write `<hex len>\r\n` ending exactly at `end` of `buf`; returns where it starts.
/// The relay reads upstream bytes with headroom in front so framing needs no copy.
pub fn write_chunk_header_before(buf: &mut [u8], end: usize, len: usize) -> usize {
    let mut hex = [0u8; 16];
    let mut i = hex.len();
    let mut n = len;
    loop {
        i -= 1;
        hex[i] = b"0123456789abcdef"[n & 15];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    let digits = &hex[i..];
    let start = end - digits.len() - 2;
    buf[start..start + digits.len()].copy_from_slice(digits);
    buf[end - 2] = b'\r';
    buf[end - 1] = b'\n';
    start
}

/// Room kept in front of upstream body bytes for a chunk header: 16 hex digits + CRLF.
pub const CHUNK_HEADROOM: usize = 18;

pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";
