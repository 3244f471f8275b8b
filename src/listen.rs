//! The listen address and the file-descriptor budget: refusing an address another process
//! listens on, binding each worker's SO_REUSEPORT listener (or adopting one a previous ringway
//! handed over, see `takeover`), and raising the soft `RLIMIT_NOFILE` to what the config needs.
//!
//! Must not: accept connections — the workers do.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use monoio::net::{ListenerOpts, TcpListener};

use crate::config::Config;

// The listen address and the file-descriptor budget

/// Refuses an address another socket already listens on. The workers bind with SO_REUSEPORT,
/// which would let a second ringway (or any reuseport server of the same user) silently share
/// the port and take part of its connections; a bind without SO_REUSEPORT fails with EADDRINUSE
/// when anyone listens there, so one is tried first and released at once. It sets SO_REUSEADDR
/// like the workers do, so connections of a previous run in TIME_WAIT do not count, and it never
/// listens, so it takes no connection.
///
/// A deliberate takeover (`--takeover`, an upgrade handing the port to a new process) does not
/// bind at all: it receives the running relay's listening sockets (`takeover`). Nothing else
/// depends on this check.
pub fn claim_address(listen: SocketAddr) -> io::Result<()> {
    let domain = if listen.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // SAFETY: plain socket(2); the result is checked and owned below.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns; closed when `sock` drops.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    // SAFETY: a valid socket and a c_int option value of the right size.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    let (addr, len) = sockaddr(listen);
    // SAFETY: `addr` is a sockaddr_storage holding a sockaddr_in/in6 of length `len`.
    let r = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    Err(match e.raw_os_error() {
        Some(libc::EADDRINUSE) => io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "cannot listen on {listen}: another process already listens there ({e}); \
                 ringway does not share its port (a second relay would silently take part of \
                 the traffic): stop the other process or choose another server.listen"
            ),
        ),
        _ => io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}")),
    })
}

fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid (unspecified) value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Descriptors the process holds besides client and upstream sockets, per process and per
/// worker (stdio, listener, ring or epoll and event fds, the spare, the blocking pool's files,
/// name resolution), with headroom.
pub const FD_RESERVE_BASE: u64 = 64;
pub const FD_RESERVE_PER_WORKER: u64 = 16;

/// How many file descriptors a config needs against what `RLIMIT_NOFILE` allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdBudget {
    /// `max_connections` client sockets, one upstream socket per request in flight
    /// (`max_inflight`), and the reserve.
    pub needed: u64,
    pub reserve: u64,
    /// `RLIMIT_NOFILE` now (`u64::MAX` for unlimited).
    pub soft: u64,
    pub hard: u64,
}

impl FdBudget {
    pub fn of(config: &Config) -> FdBudget {
        let (soft, hard) = nofile_limit();
        FdBudget::with_limits(config, soft, hard)
    }

    pub fn with_limits(config: &Config, soft: u64, hard: u64) -> FdBudget {
        let reserve = FD_RESERVE_BASE + FD_RESERVE_PER_WORKER * config.effective_workers() as u64;
        FdBudget {
            needed: config.server.max_connections as u64
                + config.server.max_inflight as u64
                + reserve,
            reserve,
            soft,
            hard,
        }
    }

    /// The soft limit the process should run with: raised as far as needed, never past hard.
    pub fn target_soft(&self) -> u64 {
        self.soft.max(self.needed.min(self.hard))
    }

    /// The warning when even the hard limit leaves too little room, naming the config's keys.
    pub fn warning(&self, config: &Config) -> Option<String> {
        (self.hard < self.needed).then(|| {
            format!(
                "server.max_connections ({}) and server.max_inflight ({}) need about {} file descriptors, but RLIMIT_NOFILE allows {} (hard limit): at the limit ringway closes idle connections first and then refuses new ones; raise the limit (LimitNOFILE= in the systemd unit, ulimit -n) or lower max_connections",
                config.server.max_connections, config.server.max_inflight, self.needed, self.hard
            )
        })
    }
}

fn nofile_limit() -> (u64, u64) {
    // SAFETY: getrlimit fills a plain struct.
    unsafe {
        let mut r: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return (u64::MAX, u64::MAX);
        }
        (r.rlim_cur as u64, r.rlim_max as u64)
    }
}

/// At start: raises the soft `RLIMIT_NOFILE` to what the config needs (at most the hard limit),
/// and logs what it did, or warns when even the hard limit is too low.
pub fn prepare_fd_limit(config: &Config) {
    let budget = FdBudget::of(config);
    let target = budget.target_soft();
    if target > budget.soft {
        // SAFETY: setrlimit with a soft limit between the current one and the hard limit.
        let r = unsafe {
            let lim = libc::rlimit {
                rlim_cur: target as libc::rlim_t,
                rlim_max: budget.hard as libc::rlim_t,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim)
        };
        if r == 0 {
            crate::log::info(&format!(
                "RLIMIT_NOFILE soft limit raised from {} to {target} (max_connections {} + max_inflight {} + {} for the process)",
                budget.soft, config.server.max_connections, config.server.max_inflight, budget.reserve
            ));
        } else {
            crate::log::warn(&format!(
                "cannot raise RLIMIT_NOFILE from {} to {target}: {}",
                budget.soft,
                io::Error::last_os_error()
            ));
        }
    }
    if let Some(w) = budget.warning(config) {
        crate::log::warn(&w);
    }
}

/// One worker's listener: SO_REUSEPORT, so every worker binds the same address.
pub fn bind(listen: SocketAddr) -> io::Result<TcpListener> {
    let mut opts = ListenerOpts::new();
    opts.reuse_port = true;
    opts.reuse_addr = true;
    opts.backlog = 4096;
    TcpListener::bind_with_config(listen, &opts)
}

/// One worker's listener from a socket a previous ringway handed over (already bound and
/// listening). `nonblocking` for the epoll driver, which needs it; io_uring does not, and the
/// flag is left as the socket came (it is shared with the other process).
pub fn adopt(fd: OwnedFd, nonblocking: bool) -> io::Result<TcpListener> {
    let listener = std::net::TcpListener::from(fd);
    if nonblocking {
        listener.set_nonblocking(true)?;
    }
    TcpListener::from_std(listener)
}

/// A duplicate of a worker's listening socket (close-on-exec), for handing it over later.
pub fn duplicate(listener: &TcpListener) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor the listener keeps open for this call; the new
    // descriptor is checked and then owned by the returned value.
    let fd = unsafe { libc::fcntl(listener.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_address_refuses_a_port_someone_listens_on() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let e = claim_address(addr).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        let msg = e.to_string();
        assert!(
            msg.contains(&addr.to_string()) && msg.contains("Address already in use"),
            "{msg}"
        );
        drop(l);
        claim_address(addr).unwrap();
        // A port in TIME_WAIT from an earlier connection is not "in use".
        let l = std::net::TcpListener::bind(addr).unwrap();
        let c = std::net::TcpStream::connect(addr).unwrap();
        let (s, _) = l.accept().unwrap();
        drop(s);
        drop(c);
        drop(l);
        claim_address(addr).unwrap();
        let v6 = std::net::TcpListener::bind("[::1]:0");
        if let Ok(v6) = v6 {
            let e = claim_address(v6.local_addr().unwrap()).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        }
    }

    #[test]
    fn fd_budget_raises_the_soft_limit_up_to_the_hard_one() {
        let text = "[server]\nworkers = 2\nmax_connections = 1000\nmax_inflight = 100\n\
                    [[channels]]\nname = \"c\"\nprovider = \"openai\"\nbase_url = \"http://127.0.0.1:1\"\n\
                    keys = [\"k\"]\nmodels = [\"*\"]\n[[tokens]]\nname = \"t\"\nkey = \"tk\"\nmodels = [\"*\"]\n";
        let config = crate::config::parse(text, std::path::Path::new("t.toml")).unwrap();
        let b = FdBudget::with_limits(&config, 1024, 4096);
        assert_eq!(
            b.needed,
            1000 + 100 + FD_RESERVE_BASE + 2 * FD_RESERVE_PER_WORKER
        );
        assert_eq!(b.target_soft(), b.needed);
        assert!(b.warning(&config).is_none());
        let b = FdBudget::with_limits(&config, 1024, 1024);
        assert_eq!(b.target_soft(), 1024);
        let w = b.warning(&config).expect("hard limit too low");
        assert!(
            w.contains("max_connections (1000)") && w.contains("allows 1024"),
            "{w}"
        );
        // Never lowered.
        let b = FdBudget::with_limits(&config, 100_000, u64::MAX);
        assert_eq!(b.target_soft(), 100_000);
    }
}
