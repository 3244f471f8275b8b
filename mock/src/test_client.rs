//! A minimal blocking HTTP/1.1 client for the unit tests: raw bytes out, responses read back
//! with their framing (Content-Length or chunked, chunk by chunk) kept visible.
//!
//! Must not: be lenient either. It panics on a malformed head or chunk, so a framing bug in the
//! mock fails its own tests.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Generous, so a loaded 2-core CI box cannot turn slowness into failures.
pub(crate) const READ_DEADLINE: Duration = Duration::from_secs(5);

pub(crate) struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
    /// Chunk payloads, for chunked responses.
    pub(crate) chunks: Vec<Vec<u8>>,
}

impl Response {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8(self.body.clone()).expect("UTF-8 body")
    }
}

impl Client {
    pub(crate) fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(READ_DEADLINE)).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub(crate) fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    pub(crate) fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 64 * 1024];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    pub(crate) fn fill_some(&mut self) {
        assert!(self.fill().expect("read") > 0, "unexpected EOF");
    }

    pub(crate) fn take(&mut self, len: usize) -> Vec<u8> {
        while self.buf.len() < len {
            self.fill_some();
        }
        let rest = self.buf.split_off(len);
        std::mem::replace(&mut self.buf, rest)
    }

    pub(crate) fn line(&mut self) -> Vec<u8> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.take(pos + 2);
                return line[..pos].to_vec();
            }
            self.fill_some();
        }
    }

    pub(crate) fn head(&mut self) -> (u16, Vec<(String, String)>) {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut parsed = httparse::Response::new(&mut headers);
            let status = parsed.parse(&self.buf).expect("valid response head");
            if let httparse::Status::Complete(len) = status {
                let code = parsed.code.unwrap();
                let headers = parsed
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_owned(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                self.take(len);
                return (code, headers);
            }
            self.fill_some();
        }
    }

    pub(crate) fn chunk(&mut self) -> Option<Vec<u8>> {
        let line = self.line();
        let size =
            usize::from_str_radix(std::str::from_utf8(&line).unwrap(), 16).expect("hex chunk size");
        if size == 0 {
            assert_eq!(self.line(), b"", "no trailers expected");
            return None;
        }
        let data = self.take(size);
        assert_eq!(self.take(2), b"\r\n");
        Some(data)
    }

    pub(crate) fn response(&mut self) -> Response {
        let (status, headers) = self.head();
        let mut response = Response {
            status,
            headers,
            body: Vec::new(),
            chunks: Vec::new(),
        };
        if response.header("transfer-encoding") == Some("chunked") {
            while let Some(data) = self.chunk() {
                response.body.extend_from_slice(&data);
                response.chunks.push(data);
            }
        } else if let Some(len) = response.header("content-length") {
            response.body = self.take(len.parse().unwrap());
        }
        response
    }

    /// Everything until EOF or an error, and the error's kind if there was one.
    pub(crate) fn drain(&mut self) -> (Vec<u8>, Option<io::ErrorKind>) {
        loop {
            match self.fill() {
                Ok(0) => return (std::mem::take(&mut self.buf), None),
                Ok(_) => {}
                Err(e) => return (std::mem::take(&mut self.buf), Some(e.kind())),
            }
        }
    }
}

pub(crate) fn post(path: &str, body: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nhost: mock\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

pub(crate) fn chat(model: &str) -> Vec<u8> {
    post(
        "/v1/chat/completions",
        &format!("{{\"model\":\"{model}\",\"messages\":[]}}"),
    )
}
