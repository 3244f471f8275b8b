//! The incremental `Transfer-Encoding: chunked` decoder (both directions use it), strict per
//! RFC 9112: CRLF line ends only, hex sizes only.

use std::ops::Range;

use super::WireError;

/// Incremental decoder for `Transfer-Encoding: chunked`, fed whatever bytes arrive.
///
/// It reports the data ranges of each input slice and never buffers, so the relay can forward
/// or compact data in place. Chunk extensions and trailers are accepted and discarded.
#[derive(Clone, Debug)]
pub struct ChunkedDecoder {
    state: ChunkState,
    remaining: u64,
    digits: u8,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ChunkState {
    /// Hex digits of the chunk size.
    Size,
    /// Whitespace after the size: only `;` (an extension) or the CR may follow.
    SizeWs,
    /// Inside a chunk extension, up to its CR.
    Ext,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
    Done,
}

/// What one `decode` call got through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// Input bytes consumed; less than the input only once `done`.
    pub consumed: usize,
    pub done: bool,
}

/// What one `step` got through: at most one data range, relative to its input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub consumed: usize,
    pub data: Option<Range<usize>>,
    pub done: bool,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        ChunkedDecoder {
            state: ChunkState::Size,
            remaining: 0,
            digits: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// True between chunks: the point where a relay may end its own re-framed stream cleanly.
    pub fn at_chunk_boundary(&self) -> bool {
        self.state == ChunkState::Size && self.digits == 0
    }

    /// Walk `input`, calling `on_data` with each range of body data it contains.
    pub fn decode(
        &mut self,
        input: &[u8],
        mut on_data: impl FnMut(Range<usize>),
    ) -> Result<Decoded, WireError> {
        let mut pos = 0;
        loop {
            let s = self.step(&input[pos..])?;
            if let Some(r) = s.data {
                on_data(pos + r.start..pos + r.end);
            }
            pos += s.consumed;
            if s.done || pos >= input.len() || s.consumed == 0 {
                return Ok(Decoded {
                    consumed: pos,
                    done: s.done,
                });
            }
        }
    }

    /// Advance over `input` until one data range is found, the input ends, or the body ends.
    /// One range per call lets callers move bytes around in the buffer between calls.
    pub fn step(&mut self, input: &[u8]) -> Result<Step, WireError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                ChunkState::Size => match hex_value(b) {
                    Some(v) => {
                        if self.digits >= 15 {
                            return Err(WireError::BadChunk);
                        }
                        self.remaining = self.remaining * 16 + v as u64;
                        self.digits += 1;
                        i += 1;
                    }
                    None if self.digits == 0 => return Err(WireError::BadChunk),
                    // CRLF only: a bare LF, or anything but an extension after the digits
                    // (`18 zz`), is refused (RFC 9112 7.1).
                    None => {
                        self.state = match b {
                            b'\r' => ChunkState::SizeLf,
                            b';' => ChunkState::Ext,
                            b' ' | b'\t' => ChunkState::SizeWs,
                            _ => return Err(WireError::BadChunk),
                        };
                        i += 1;
                    }
                },
                ChunkState::SizeWs => {
                    self.state = match b {
                        b' ' | b'\t' => ChunkState::SizeWs,
                        b';' => ChunkState::Ext,
                        b'\r' => ChunkState::SizeLf,
                        _ => return Err(WireError::BadChunk),
                    };
                    i += 1;
                }
                ChunkState::Ext => match memchr::memchr2(b'\r', b'\n', &input[i..]) {
                    Some(off) => {
                        i += off;
                        if input[i] != b'\r' {
                            return Err(WireError::BadChunk);
                        }
                        self.state = ChunkState::SizeLf;
                        i += 1;
                    }
                    None => i = input.len(),
                },
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(WireError::BadChunk);
                    }
                    i += 1;
                    self.end_size_line();
                }
                ChunkState::Data => {
                    let avail = (input.len() - i) as u64;
                    let take = avail.min(self.remaining) as usize;
                    self.remaining -= take as u64;
                    if self.remaining == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    return Ok(Step {
                        consumed: i + take,
                        data: Some(i..i + take),
                        done: false,
                    });
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err(WireError::BadChunk);
                    }
                    i += 1;
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(WireError::BadChunk);
                    }
                    i += 1;
                    self.state = ChunkState::Size;
                }
                ChunkState::TrailerStart => {
                    i += 1;
                    match b {
                        b'\r' => self.state = ChunkState::EndLf,
                        b'\n' => return Err(WireError::BadChunk),
                        _ => self.state = ChunkState::TrailerLine,
                    }
                }
                ChunkState::TrailerLine => match memchr::memchr2(b'\r', b'\n', &input[i..]) {
                    Some(off) => {
                        i += off;
                        if input[i] != b'\r' {
                            return Err(WireError::BadChunk);
                        }
                        i += 1;
                        self.state = ChunkState::TrailerLf;
                    }
                    None => i = input.len(),
                },
                ChunkState::TrailerLf => {
                    if b != b'\n' {
                        return Err(WireError::BadChunk);
                    }
                    i += 1;
                    self.state = ChunkState::TrailerStart;
                }
                ChunkState::EndLf => {
                    if b != b'\n' {
                        return Err(WireError::BadChunk);
                    }
                    self.state = ChunkState::Done;
                    return Ok(Step {
                        consumed: i + 1,
                        data: None,
                        done: true,
                    });
                }
                ChunkState::Done => break,
            }
        }
        Ok(Step {
            consumed: i,
            data: None,
            done: self.state == ChunkState::Done,
        })
    }

    fn end_size_line(&mut self) {
        self.digits = 0;
        if self.remaining == 0 {
            self.state = ChunkState::TrailerStart;
        } else {
            self.state = ChunkState::Data;
        }
    }
}

#[inline]
fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decode the chunked bytes in `buf[from..]` in place, moving the data down to `*write_at`
/// (which must be <= `from`). Returns how far into `buf` decoding got and whether the body ended.
pub fn dechunk_in_place(
    decoder: &mut ChunkedDecoder,
    buf: &mut [u8],
    from: usize,
    write_at: &mut usize,
) -> Result<Decoded, WireError> {
    let mut pos = from;
    loop {
        let s = decoder.step(&buf[pos..])?;
        if let Some(r) = s.data {
            let len = r.len();
            buf.copy_within(pos + r.start..pos + r.end, *write_at);
            *write_at += len;
        }
        pos += s.consumed;
        if s.done || pos >= buf.len() || s.consumed == 0 {
            return Ok(Decoded {
                consumed: pos,
                done: s.done,
            });
        }
    }
}
