//! The systemd notify protocol (`sd_notify(3)`), implemented here: one datagram of
//! `KEY=VALUE` lines to the `AF_UNIX` socket named by `$NOTIFY_SOCKET`.
//!
//! Owns: finding the socket (a path, or an abstract name written with a leading `@`), the
//! messages ringway sends (`READY=1`, `STATUS=...`, `RELOADING=1` with `MONOTONIC_USEC=`,
//! `STOPPING=1`, `WATCHDOG=1`, `MAINPID=` when a successor took over) and the watchdog interval systemd asks for (`$WATCHDOG_USEC`,
//! honoured only when `$WATCHDOG_PID` is unset or names this process).
//!
//! Error handling: without `$NOTIFY_SOCKET` every call does nothing (not run by systemd). A
//! send that fails is logged once and otherwise ignored: the service manager's view is not
//! worth stopping the relay for. Must not: block (datagrams, non-blocking socket) or be called
//! on a worker's request path.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

/// A connection to the service manager, or nothing when not run under one.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
    failure_logged: AtomicBool,
}

impl Notifier {
    /// From the environment (`NOTIFY_SOCKET`, `WATCHDOG_USEC`, `WATCHDOG_PID`).
    pub fn from_env() -> Notifier {
        let target = std::env::var_os("NOTIFY_SOCKET").and_then(|raw| {
            let addr = match socket_addr(raw.as_encoded_bytes()) {
                Ok(a) => a,
                Err(e) => {
                    crate::log::warn(&format!(
                        "NOTIFY_SOCKET {raw:?} is not a usable socket address ({e}); not notifying systemd"
                    ));
                    return None;
                }
            };
            match UnixDatagram::unbound().and_then(|s| s.set_nonblocking(true).map(|()| s)) {
                Ok(s) => Some((s, addr)),
                Err(e) => {
                    crate::log::warn(&format!("notify socket: {e}; not notifying systemd"));
                    None
                }
            }
        });
        let for_us = std::env::var("WATCHDOG_PID")
            .map(|p| p.trim().parse::<u32>().ok() == Some(std::process::id()))
            .unwrap_or(true);
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|&u| u > 0 && for_us && target.is_some())
            .map(Duration::from_micros);
        Notifier {
            target,
            watchdog,
            failure_logged: AtomicBool::new(false),
        }
    }

    /// Is a service manager listening?
    pub fn is_active(&self) -> bool {
        self.target.is_some()
    }

    /// How often to send `WATCHDOG=1`: half the interval systemd set (`WatchdogSec=`).
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog.map(|d| d / 2)
    }

    /// Every worker listens: the service is up.
    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// A reload begins (SIGHUP); [`Notifier::ready`] again when it is done.
    // Called by the config reload on SIGHUP, which builds on this module.
    pub fn reloading(&self) {
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    /// Shutdown began.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    /// A one-line status for `systemctl status` (newlines would end the field: replaced).
    pub fn status(&self, text: &str) {
        self.send(&format!("STATUS={}", text.replace('\n', " ")));
    }

    /// The service's main process is now `pid` (a successor that took the listeners over,
    /// see `takeover`). Sent by the main process, so `NotifyAccess=main` accepts it.
    pub fn main_pid(&self, pid: u32) {
        self.send(&format!("MAINPID={pid}"));
    }

    /// Every worker's loop is turning.
    pub fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    fn send(&self, message: &str) {
        let Some((socket, addr)) = &self.target else {
            return;
        };
        if let Err(e) = socket.send_to_addr(message.as_bytes(), addr) {
            if !self.failure_logged.swap(true, Relaxed) {
                crate::log::warn(&format!(
                    "notify socket: sending to the service manager failed: {e} (logged once)"
                ));
            }
        }
    }
}

/// `$NOTIFY_SOCKET` as an address: a filesystem path, or `@name` for an abstract socket.
fn socket_addr(raw: &[u8]) -> std::io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    match raw {
        [] => Err(std::io::Error::other("empty")),
        [b'@', name @ ..] => SocketAddr::from_abstract_name(name),
        [b'/', ..] => {
            use std::os::unix::ffi::OsStrExt;
            SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(raw))
        }
        _ => Err(std::io::Error::other(
            "neither an absolute path nor an abstract name (@...)",
        )),
    }
}

/// `CLOCK_MONOTONIC` in microseconds, as `MONOTONIC_USEC=` wants it.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::linux::net::SocketAddrExt;

    fn notifier_for(addr: SocketAddr) -> Notifier {
        Notifier {
            target: Some((UnixDatagram::unbound().unwrap(), addr)),
            watchdog: Some(Duration::from_secs(2)),
            failure_logged: AtomicBool::new(false),
        }
    }

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn messages_reach_a_path_socket() {
        let path = std::env::temp_dir().join(format!("ringway-notify-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let sock = UnixDatagram::bind(&path).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = notifier_for(socket_addr(path.as_os_str().as_encoded_bytes()).unwrap());
        n.ready();
        n.status("serving\n2 in flight");
        n.reloading();
        n.ready();
        n.stopping();
        n.watchdog();
        n.main_pid(42);
        assert_eq!(recv(&sock), "READY=1");
        assert_eq!(recv(&sock), "STATUS=serving 2 in flight");
        let reloading = recv(&sock);
        let usec: u64 = reloading
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .unwrap_or_else(|| panic!("{reloading:?}"))
            .parse()
            .unwrap();
        assert!(usec > 0 && usec <= monotonic_usec());
        assert_eq!(recv(&sock), "READY=1");
        assert_eq!(recv(&sock), "STOPPING=1");
        assert_eq!(recv(&sock), "WATCHDOG=1");
        assert_eq!(recv(&sock), "MAINPID=42");
        assert_eq!(n.watchdog_every(), Some(Duration::from_secs(1)));
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn an_abstract_name_is_written_with_an_at_sign() {
        let name = format!("ringway-notify-test-{}", std::process::id());
        let sock =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = notifier_for(socket_addr(format!("@{name}").as_bytes()).unwrap());
        n.stopping();
        assert_eq!(recv(&sock), "STOPPING=1");
    }

    #[test]
    fn bad_addresses_are_refused() {
        assert!(socket_addr(b"").is_err());
        assert!(socket_addr(b"relative/path").is_err());
        assert!(
            socket_addr(b"@").is_ok(),
            "an empty abstract name is a valid address"
        );
    }
}
