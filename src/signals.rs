//! Signals, in one place: SIGTERM, SIGINT, SIGHUP and SIGUSR2 are blocked in every thread from the start
//! and taken by one dedicated thread with `sigwait`, so no signal ever runs a handler inside
//! the relay and none has its default action (ending the process at once).
//!
//! Owns: the signal mask ([`block`], called before any other thread exists, so every thread
//! inherits it) and the thread that acts on each signal ([`spawn`]):
//! - SIGTERM, SIGINT: begin the drain (`lifecycle`); a second one is logged and changes
//!   nothing (the drain already has its deadline; a service manager's stop timeout backs it).
//! - SIGHUP: [`on_hangup`].
//! - SIGUSR2: start a successor that takes the listeners over (`takeover`, binary upgrade).
//!
//! Must not: do work of its own beyond routing — what a signal means lives with the module that
//! owns that state (the access log, the lifecycle).

use crate::lifecycle::Lifecycle;

/// The signals this module takes over.
const HANDLED: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR2];

fn handled_set() -> libc::sigset_t {
    // SAFETY: sigemptyset / sigaddset initialise and fill a sigset_t we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in HANDLED {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Block the handled signals in the calling thread, and so in every thread it spawns later.
/// Call first thing, before any thread exists: a thread started earlier keeps the default
/// actions, and the kernel may deliver a process signal to it.
pub fn block() -> std::io::Result<()> {
    let set = handled_set();
    // SAFETY: pthread_sigmask with a valid set and a null old-set pointer.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Start the thread that waits for the handled signals and acts on them, for the rest of the
/// process. [`block`] must have been called first.
pub fn spawn(lifecycle: &'static Lifecycle) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("ringway-signals".into())
        .spawn(move || {
            let set = handled_set();
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: sigwait with a valid set and an out-parameter we own.
                let rc = unsafe { libc::sigwait(&set, &mut sig) };
                if rc != 0 {
                    continue;
                }
                match sig {
                    libc::SIGHUP => on_hangup(),
                    libc::SIGTERM | libc::SIGINT => on_stop(lifecycle, name(sig)),
                    libc::SIGUSR2 => crate::takeover::start_successor(lifecycle),
                    _ => {}
                }
            }
        })?;
    Ok(())
}

fn name(sig: libc::c_int) -> &'static str {
    match sig {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        _ => "signal",
    }
}

/// SIGTERM / SIGINT: drain and exit (the workers and `server` do the rest).
fn on_stop(lifecycle: &'static Lifecycle, signal: &'static str) {
    if lifecycle.request_drain(signal) {
        crate::log::info(&format!(
            "{signal}: shutting down: no new connections; in-flight requests have up to {} to finish",
            crate::config::format_duration(lifecycle.drain_for())
        ));
    } else {
        crate::log::info(&format!(
            "{signal}: already shutting down ({} worker(s) still draining)",
            lifecycle.running()
        ));
    }
}

/// SIGHUP: what the relay does on a hang-up. Today: the access log file is reopened (for
/// logrotate). The config reload belongs here too, once it exists.
fn on_hangup() {
    crate::reload::on_hangup();
}
