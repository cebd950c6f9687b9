//! The pod sandbox's process: PID 1 of the pause container, which holds the pod's network,
//! IPC and UTS namespaces. It sleeps in `pause()`, reaps zombies (containers that share its
//! PID namespace hand their orphans to it), and exits on SIGINT/SIGTERM — as PID 1 the
//! default action of those signals is "ignore", so it needs explicit handlers.

// The whole program is signal handling and two libc calls; this is its narrow syscall module.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

extern "C" fn on_child(_: libc::c_int) {
    // Reap every exited child; waitpid is async-signal-safe.
    // SAFETY: waitpid with WNOHANG on any child, null status pointer is allowed.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
}

fn install(sig: libc::c_int, handler: extern "C" fn(libc::c_int)) {
    // SAFETY: a zeroed sigaction with a valid handler and an empty mask is well-formed.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as usize;
        libc::sigemptyset(&mut action.sa_mask);
        action.sa_flags = libc::SA_RESTART;
        if libc::sigaction(sig, &action, std::ptr::null_mut()) != 0 {
            eprintln!("pause: installing a handler for signal {sig} failed");
            std::process::exit(2);
        }
    }
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("-v") {
        println!("pause (kaze) {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    if std::process::id() != 1 {
        eprintln!("pause: warning: not running as PID 1");
    }
    install(libc::SIGINT, on_stop);
    install(libc::SIGTERM, on_stop);
    install(libc::SIGCHLD, on_child);
    while !STOP.load(Ordering::SeqCst) {
        // SAFETY: pause() has no arguments and only returns after a signal handler ran.
        unsafe { libc::pause() };
    }
    eprintln!("pause: shutting down on signal");
}
