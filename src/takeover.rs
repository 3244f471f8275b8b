//! Handing the listening sockets to a new ringway process (`ringway --config PATH --takeover`),
//! for a binary upgrade that refuses no connection (docs/upgrade.md has the reasoning).
//!
//! Owns: the takeover socket — a Unix stream socket with an abstract name derived from
//! `server.listen` ([`socket_name`]) — on both sides of its short exchange:
//! - the running relay ([`offer`]): a `ringway-takeover` thread holds a duplicate of every
//!   worker's listening socket and gives them, with `SCM_RIGHTS`, to a process of the same user
//!   that asks; once that process says its workers listen, it releases the name (so the new
//!   process can offer in turn) and stops offering. When a drain begins it closes the
//!   duplicates and the name at once, so a drain without a takeover closes the listeners as
//!   before (its queued connections are refused, not left hanging);
//! - the new process ([`take_over`], [`Handoff::complete`]): asks for the listeners, checks that
//!   each is a listening TCP socket bound to its own `server.listen`, and hands them to its
//!   workers instead of binding new ones.
//!
//! Why handing the sockets over and not a second `SO_REUSEPORT` bind: a listening socket's
//! accept queue dies with its last descriptor, resetting the connections in it; passed on, the
//! socket (and its queue) outlives the old process, so there is no moment a connection can be
//! lost. The old process stops accepting when it drains and the new one has been accepting
//! from the same queues all along.
//!
//! The exchange (lines of text, each way, with the timeouts below):
//! ```text
//! new → old   ringway-takeover 1 pid <pid>
//! old → new   listeners <n> pid <pid>          + n descriptors (SCM_RIGHTS)
//! new → old   ready                            (its workers listen on them)
//! old → new   released                         (the name is free)
//! ```
//! SIGUSR2 does the whole upgrade from inside the running relay ([`start_successor`]): it
//! starts its own binary (the file now at the path it was started from, so an upgraded one)
//! as `--config PATH --takeover`, and when that child has taken over it tells the service
//! manager the child is the main process now (`MAINPID=`) and drains itself. That is the way
//! under systemd, where the new process must be in the unit's cgroup (docs/upgrade.md).
//!
//! Both sides check `SO_PEERCRED`: the peer runs as the same user (effective uid), or nothing is
//! handed over. A peer that closes, answers anything else, or stays silent past the timeout ends
//! the exchange; the running relay keeps serving and keeps offering.
//!
//! Must not: accept client connections, or be on a worker's path (its own thread; the workers
//! only receive a listener at start).

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::Duration;

use crate::lifecycle::Lifecycle;

/// The protocol line a new process opens with (its version: 1).
const HELLO: &str = "ringway-takeover 1";
/// At most this many listeners in one handoff (the kernel's `SCM_MAX_FD`).
const MAX_LISTENERS: usize = 253;
/// How long one line of the exchange may take, except `ready`.
const LINE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the new process may take from receiving the listeners to `ready` (its runtimes,
/// rings and workers start in between).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the offering thread looks for a drain while nobody connects.
const POLL_EVERY: Duration = Duration::from_millis(50);
/// The longest line either side reads.
const MAX_LINE: usize = 128;

/// The abstract socket name for a listen address: `ringway-takeover:127.0.0.1:3000`.
pub fn socket_name(listen: SocketAddr) -> String {
    format!("ringway-takeover:{listen}")
}

fn socket_addr(listen: SocketAddr) -> io::Result<UnixAddr> {
    UnixAddr::from_abstract_name(socket_name(listen).as_bytes())
}

// ---------------------------------------------------------------------------------------------
// The running relay's side

/// Starts offering `listeners` (duplicates of the workers' listening sockets, worker order) to
/// a new process on the takeover socket of `listen`, until a takeover completes or a drain
/// begins. Never fails the start: when the name is taken, or the thread cannot start, it logs
/// that this process cannot be taken over.
pub fn offer(listen: SocketAddr, listeners: Vec<OwnedFd>, lifecycle: &'static Lifecycle) {
    let socket = match bind_name(listen) {
        Ok(s) => s,
        Err(e) => {
            crate::log::warn(&format!(
                "takeover: cannot open the takeover socket @{} ({e}); a new process cannot take \
                 this relay's listeners over (ringway --takeover)",
                socket_name(listen)
            ));
            return;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("ringway-takeover".into())
        .spawn(move || run_offer(listen, socket, listeners, lifecycle));
    if let Err(e) = spawned {
        crate::log::warn(&format!(
            "takeover: cannot start the takeover thread ({e}); this relay cannot be taken over"
        ));
    }
}

fn bind_name(listen: SocketAddr) -> io::Result<UnixListener> {
    let socket = UnixListener::bind_addr(&socket_addr(listen)?)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

fn run_offer(
    listen: SocketAddr,
    socket: UnixListener,
    listeners: Vec<OwnedFd>,
    lifecycle: &'static Lifecycle,
) {
    loop {
        if lifecycle.drain_until().is_some() {
            // Dropping `listeners` here: the workers' own descriptors are the last ones, so the
            // drain closes the listening sockets as it would without a takeover.
            return;
        }
        if !readable(socket.as_raw_fd(), POLL_EVERY) {
            continue;
        }
        let peer = match socket.accept() {
            Ok((peer, _)) => peer,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                crate::log::warn(&format!("takeover: accept on the takeover socket: {e}"));
                std::thread::sleep(POLL_EVERY);
                continue;
            }
        };
        match hand_over(&peer, &listeners, lifecycle) {
            Ok(pid) => {
                drop(socket);
                let ours = SUCCESSOR.load(Relaxed) == pid;
                if ours {
                    // Before `released`: the successor's READY=1 must reach the service
                    // manager after it learned the successor is the main process.
                    crate::notify::Notifier::from_env().main_pid(pid);
                }
                let _ = peer.set_write_timeout(Some(LINE_TIMEOUT));
                let _ = (&peer).write_all(b"released\n");
                if ours {
                    crate::log::info(&format!(
                        "takeover: the listeners of {listen} were handed to ringway pid {pid} \
                         (started on SIGUSR2), which accepts on them now; draining this process"
                    ));
                    lifecycle.request_drain("SIGUSR2");
                } else {
                    crate::log::info(&format!(
                        "takeover: the listeners of {listen} were handed to ringway pid {pid}, \
                         which accepts on them now; SIGTERM this process (pid {}) to drain it \
                         and finish the upgrade",
                        std::process::id()
                    ));
                }
                return;
            }
            Err(e) => crate::log::warn(&format!(
                "takeover: a takeover did not complete ({e}); still serving, and still offering \
                 the listeners"
            )),
        }
    }
}

/// One exchange with a process asking for the listeners; its pid once it said `ready`.
fn hand_over(
    peer: &UnixStream,
    listeners: &[OwnedFd],
    lifecycle: &'static Lifecycle,
) -> io::Result<u32> {
    peer.set_nonblocking(false)?;
    peer.set_read_timeout(Some(LINE_TIMEOUT))?;
    peer.set_write_timeout(Some(LINE_TIMEOUT))?;
    let cred = peer_cred(peer.as_raw_fd())?;
    check_same_user(&cred)?;
    let hello = read_line(peer)?;
    if !hello.starts_with(HELLO) {
        return Err(io::Error::other(format!(
            "pid {} sent {hello:?}, not a takeover request",
            cred.pid
        )));
    }
    if listeners.len() > MAX_LISTENERS {
        return Err(io::Error::other(format!(
            "{} listeners are more than one handoff carries ({MAX_LISTENERS})",
            listeners.len()
        )));
    }
    if lifecycle.drain_until().is_some() {
        return Err(io::Error::other("this relay began draining"));
    }
    let line = format!("listeners {} pid {}\n", listeners.len(), std::process::id());
    let fds: Vec<RawFd> = listeners.iter().map(AsRawFd::as_raw_fd).collect();
    send_with_fds(peer.as_raw_fd(), line.as_bytes(), &fds)?;
    peer.set_read_timeout(Some(READY_TIMEOUT))?;
    match read_line(peer)?.as_str() {
        "ready" => Ok(cred.pid as u32),
        other => Err(io::Error::other(format!(
            "pid {} answered {other:?} instead of ready",
            cred.pid
        ))),
    }
}

// ---------------------------------------------------------------------------------------------
// SIGUSR2: the running relay starts its successor

/// The config path this process was started with, for its successor's command line.
static CONFIG_PATH: OnceLock<PathBuf> = OnceLock::new();
/// The pid of the successor SIGUSR2 started, while it runs (0: none).
static SUCCESSOR: AtomicU32 = AtomicU32::new(0);

/// Remember the config path for [`start_successor`] (called once at start).
pub fn remember_config_path(path: &std::path::Path) {
    let _ = CONFIG_PATH.set(path.to_path_buf());
}

/// SIGUSR2: start `<this binary's path> --config <same path> --takeover` as a child (same
/// environment and working directory, output to the same stderr). One at a time, and not while
/// draining. The child's takeover (see [`offer`]) then makes this process hand over and drain.
pub fn start_successor(lifecycle: &'static Lifecycle) {
    if lifecycle.drain_until().is_some() {
        crate::log::info("SIGUSR2: already shutting down; no successor started");
        return;
    }
    if SUCCESSOR.load(Relaxed) != 0 {
        crate::log::info(&format!(
            "SIGUSR2: successor pid {} is already starting; ignored",
            SUCCESSOR.load(Relaxed)
        ));
        return;
    }
    let Some(config) = CONFIG_PATH.get() else {
        return;
    };
    let exe = match binary_path() {
        Ok(p) => p,
        Err(e) => {
            crate::log::error(&format!(
                "SIGUSR2: cannot tell this binary's path ({e}); no successor started"
            ));
            return;
        }
    };
    let mut command = std::process::Command::new(&exe);
    command
        .arg("--config")
        .arg(config)
        .arg("--takeover")
        .stdin(std::process::Stdio::null())
        // systemd names the process its watchdog expects pings from; the successor becomes
        // that process (MAINPID=), so it keeps WATCHDOG_USEC and drops the old pid.
        .env_remove("WATCHDOG_PID");
    // SAFETY: the closure runs in the forked child before exec and makes only
    // async-signal-safe system calls (close_range, getrlimit, fcntl).
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            close_on_exec_from(3);
            Ok(())
        });
    }
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            crate::log::error(&format!(
                "SIGUSR2: cannot start {} ({e}); still serving",
                exe.display()
            ));
            return;
        }
    };
    let pid = child.id();
    SUCCESSOR.store(pid, Relaxed);
    crate::log::info(&format!(
        "SIGUSR2: started {} --config {} --takeover as pid {pid}",
        exe.display(),
        config.display()
    ));
    // Reaps the child if it ends while this process still runs (a failed start: this process
    // keeps serving, and a later SIGUSR2 may try again).
    let _ = std::thread::Builder::new()
        .name("ringway-successor".into())
        .spawn(move || {
            let status = child.wait();
            SUCCESSOR.store(0, Relaxed);
            if lifecycle.drain_until().is_none() {
                crate::log::warn(&format!(
                    "SIGUSR2: successor pid {pid} exited ({}) before taking over; still serving",
                    status.map_or_else(|e| e.to_string(), |s| s.to_string())
                ));
            }
        });
}

/// Marks every descriptor from `first` on close-on-exec, in a forked child before exec: the
/// io_uring driver accepts client connections without `SOCK_CLOEXEC`, and a successor that
/// inherited them would hold those connections open after this process closed them.
/// `close_range(CLOSE_RANGE_CLOEXEC)` (Linux 5.11), else one `fcntl` per possible descriptor.
fn close_on_exec_from(first: libc::c_uint) {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: plain system calls on descriptor numbers; EBADF for unused ones is ignored.
    unsafe {
        if libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        ) == 0
        {
            return;
        }
        let mut limit: libc::rlimit = std::mem::zeroed();
        let top = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur.min(1 << 20) as libc::c_int
        } else {
            1024
        };
        for fd in first as libc::c_int..top {
            libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
        }
    }
}

/// The path this binary was started from: `/proc/self/exe`, which after an upgrade that
/// replaced the file names the old, deleted one ("... (deleted)"): the path itself is wanted,
/// where the new binary now is.
fn binary_path() -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let text = exe.as_os_str().as_encoded_bytes();
    let path = match text.strip_suffix(b" (deleted)") {
        // SAFETY: a prefix of an OsStr's encoded bytes that ends before an ASCII space.
        Some(p) => PathBuf::from(unsafe { std::ffi::OsStr::from_encoded_bytes_unchecked(p) }),
        None => exe,
    };
    Ok(path)
}

// ---------------------------------------------------------------------------------------------
// The new process's side

/// Listeners taken over from a running relay, and the connection to it until the takeover is
/// confirmed.
pub struct Handoff {
    /// Listening sockets, in the old process's worker order.
    pub listeners: Vec<OwnedFd>,
    /// The old process.
    pub from_pid: u32,
    peer: UnixStream,
}

/// `--takeover`: when something listens on `listen`, take the listeners of the ringway that
/// does (same user, same address), or fail saying why; when nothing does, `None` (start as
/// usual: the flag is safe to leave in a service definition).
pub fn take_over(listen: SocketAddr) -> io::Result<Option<Handoff>> {
    match crate::listen::claim_address(listen) {
        Ok(()) => {
            crate::log::info(&format!(
                "takeover: nothing listens on {listen}; starting without a takeover"
            ));
            return Ok(None);
        }
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {}
        Err(e) => return Err(e),
    }
    let fail = |why: String| {
        io::Error::other(format!(
            "--takeover: {listen} is in use, and {why}; the port stays with its current holder"
        ))
    };
    let peer = UnixStream::connect_addr(&socket_addr(listen)?).map_err(|e| {
        fail(format!(
            "no ringway offers its listeners on @{} ({e}): the holder is not a ringway with \
             takeover support (a version before it, or another program), is being taken over \
             right now, or is draining",
            socket_name(listen)
        ))
    })?;
    let exchange = || -> io::Result<Handoff> {
        peer.set_read_timeout(Some(LINE_TIMEOUT))?;
        peer.set_write_timeout(Some(LINE_TIMEOUT))?;
        let cred = peer_cred(peer.as_raw_fd())?;
        check_same_user(&cred)?;
        (&peer).write_all(format!("{HELLO} pid {}\n", std::process::id()).as_bytes())?;
        let (line, listeners) = recv_with_fds(peer.as_raw_fd())?;
        let n = parse_offer(&line, cred.pid as u32)?;
        if listeners.len() != n {
            return Err(io::Error::other(format!(
                "pid {} announced {n} listeners and passed {}",
                cred.pid,
                listeners.len()
            )));
        }
        for fd in &listeners {
            check_listener(fd, listen)?;
        }
        Ok(Handoff {
            listeners,
            from_pid: cred.pid as u32,
            peer: peer.try_clone()?,
        })
    };
    let handoff = exchange().map_err(|e| fail(e.to_string()))?;
    crate::log::info(&format!(
        "takeover: took {} listener(s) of {listen} from ringway pid {}",
        handoff.listeners.len(),
        handoff.from_pid
    ));
    Ok(Some(handoff))
}

impl Handoff {
    /// Every worker listens: tell the old process, and wait (bounded) until it released the
    /// takeover socket's name, so this process can offer its listeners in turn.
    pub fn complete(self) -> io::Result<()> {
        (&self.peer).write_all(b"ready\n")?;
        self.peer.set_read_timeout(Some(LINE_TIMEOUT))?;
        match read_line(&self.peer)?.as_str() {
            "released" => Ok(()),
            other => Err(io::Error::other(format!(
                "pid {} answered {other:?} instead of released",
                self.from_pid
            ))),
        }
    }
}

/// `listeners <n> pid <pid>` from the old process.
fn parse_offer(line: &str, pid: u32) -> io::Result<usize> {
    let bad = || io::Error::other(format!("pid {pid} answered {line:?}"));
    let mut words = line.split(' ');
    if words.next() != Some("listeners") {
        return Err(bad());
    }
    let n: usize = words.next().and_then(|n| n.parse().ok()).ok_or_else(bad)?;
    if n == 0 || n > MAX_LISTENERS {
        return Err(bad());
    }
    Ok(n)
}

/// A passed descriptor must be a listening TCP socket bound to `listen` itself.
fn check_listener(fd: &OwnedFd, listen: SocketAddr) -> io::Result<()> {
    let accepting = sockopt_int(fd.as_raw_fd(), libc::SO_ACCEPTCONN)?;
    let kind = sockopt_int(fd.as_raw_fd(), libc::SO_TYPE)?;
    let protocol = sockopt_int(fd.as_raw_fd(), libc::SO_PROTOCOL)?;
    if accepting != 1 || kind != libc::SOCK_STREAM || protocol != libc::IPPROTO_TCP {
        return Err(io::Error::other(
            "a passed descriptor is not a listening TCP socket",
        ));
    }
    let dup = fd.try_clone()?;
    let bound = std::net::TcpListener::from(dup).local_addr()?;
    if bound != listen {
        return Err(io::Error::other(format!(
            "a passed listener is bound to {bound}, not {listen}"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Sockets, credentials and descriptors

fn check_same_user(peer: &libc::ucred) -> io::Result<()> {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if peer.uid != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "the peer (pid {}) runs as uid {}, not as this process's uid {me}",
                peer.pid, peer.uid
            ),
        ));
    }
    Ok(())
}

fn peer_cred(fd: RawFd) -> io::Result<libc::ucred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, which we own.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred)
}

fn sockopt_int(fd: RawFd, option: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `value`, which we own.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// Whether `fd` becomes readable within `within`.
fn readable(fd: RawFd, within: Duration) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one pollfd we own.
    let r = unsafe { libc::poll(&mut p, 1, within.as_millis() as libc::c_int) };
    r > 0 && p.revents & libc::POLLIN != 0
}

/// One `\n`-terminated line (without it), at most [`MAX_LINE`] bytes, under the socket's read
/// timeout.
fn read_line(mut s: &UnixStream) -> io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match s.read(&mut byte) {
            Ok(0) => return Err(io::Error::other("the peer closed the connection")),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() >= MAX_LINE => return Err(io::Error::other("a line too long")),
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the peer fell silent",
                ))
            }
            Err(e) => return Err(e),
        }
    }
    String::from_utf8(line).map_err(|_| io::Error::other("a line not in UTF-8"))
}

/// Room for [`MAX_LISTENERS`] descriptors in a control message.
const CMSG_ROOM: usize = 64 + MAX_LISTENERS * std::mem::size_of::<RawFd>();

/// `bytes` and, with the first of them, `fds` (SCM_RIGHTS).
fn send_with_fds(socket: RawFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
    let fd_bytes = std::mem::size_of_val(fds);
    let mut control = vec![0u8; CMSG_ROOM];
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    };
    // SAFETY: msghdr is plain data; all zeroes is valid, and the fields are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is a size computation.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as _;
    assert!(msg.msg_controllen <= control.len());
    // SAFETY: `msg` points at `control`, which has room for one header and `fds`
    // (checked above); CMSG_FIRSTHDR returns a pointer into it.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(cmsg).cast(), fds.len());
    }
    // SAFETY: a valid msghdr whose buffers outlive the call.
    let n = unsafe { libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != bytes.len() {
        return Err(io::Error::other("a short write on the takeover socket"));
    }
    Ok(())
}

/// One line and the descriptors that came with it (close-on-exec). Descriptors are owned from
/// the moment they arrive, so an error after that closes them.
fn recv_with_fds(socket: RawFd) -> io::Result<(String, Vec<OwnedFd>)> {
    let mut buf = [0u8; MAX_LINE];
    let mut control = vec![0u8; CMSG_ROOM];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all zeroes is valid, and the fields are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control.len() as _;
    let n = loop {
        // SAFETY: a valid msghdr whose buffers outlive the call.
        let n = unsafe { libc::recvmsg(socket, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n >= 0 {
            break n as usize;
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the peer fell silent",
                ))
            }
            _ => return Err(e),
        }
    };
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel wrote into `control`, as described by
    // `msg`; each SCM_RIGHTS payload is an array of descriptors now owned by this process.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let len = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..len / std::mem::size_of::<RawFd>() {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::other("too many descriptors passed"));
    }
    let text = &buf[..n];
    let Some(end) = text.iter().position(|&b| b == b'\n') else {
        return Err(io::Error::other(if n == 0 {
            "the peer closed the connection"
        } else {
            "an incomplete line"
        }));
    };
    let line = std::str::from_utf8(&text[..end]).map_err(|_| io::Error::other("not UTF-8"))?;
    Ok((line.to_string(), fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptors_cross_a_socket_pair_and_are_checked() {
        let (a, b) = UnixStream::pair().unwrap();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        send_with_fds(
            a.as_raw_fd(),
            b"listeners 2 pid 1\n",
            &[l.as_raw_fd(), other.as_raw_fd()],
        )
        .unwrap();
        b.set_read_timeout(Some(LINE_TIMEOUT)).unwrap();
        let (line, fds) = recv_with_fds(b.as_raw_fd()).unwrap();
        assert_eq!(line, "listeners 2 pid 1");
        assert_eq!(parse_offer(&line, 1).unwrap(), 2);
        assert_eq!(fds.len(), 2);
        check_listener(&fds[0], addr).unwrap();
        let e = check_listener(&fds[1], addr).unwrap_err().to_string();
        assert!(e.contains("not 127.0.0.1"), "{e}");
        // A connected socket is not a listener.
        let c = std::net::TcpStream::connect(addr).unwrap();
        let e = check_listener(&OwnedFd::from(c), addr)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a listening TCP socket"), "{e}");
        assert_eq!(
            peer_cred(a.as_raw_fd()).unwrap().pid,
            std::process::id() as i32
        );
    }

    #[test]
    fn a_peer_of_another_user_gets_nothing() {
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        let peer = |uid| libc::ucred {
            pid: 7,
            uid,
            gid: 0,
        };
        check_same_user(&peer(me)).unwrap();
        let e = check_same_user(&peer(me.wrapping_add(1))).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("pid 7"), "{e}");
    }

    #[test]
    fn the_binary_path_drops_the_deleted_mark() {
        let exe = binary_path().unwrap();
        assert!(!exe.to_string_lossy().ends_with(" (deleted)"));
        assert!(exe.is_absolute(), "{}", exe.display());
    }

    #[test]
    fn offers_that_do_not_parse_are_refused() {
        for line in [
            "",
            "listeners",
            "listeners 0 pid 1",
            "listeners x",
            "sockets 1",
            "listeners 999",
        ] {
            assert!(parse_offer(line, 1).is_err(), "{line:?}");
        }
    }
}
