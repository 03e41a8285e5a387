//! Feeding, draining and reaping a child process by hand.
//!
//! `std::process::Child::wait` would reap the child and throw its resource
//! usage away, so the child is reaped with `wait4(2)` instead. Its pipes are
//! serviced with `poll(2)` from the calling thread: no helper threads whose
//! creation would be counted in the measured latency, and no deadlock when
//! the child fills stdout while we are still writing its stdin.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout};
use std::time::Instant;

/// How a reaped child ended, with its `rusage`.
pub(crate) struct Reaped {
    /// Exit code, or 128 + signal number if killed by a signal (as shells
    /// report it).
    pub exit_code: i32,
    /// `ru_maxrss` in KiB: on Linux the maximum over the child and all the
    /// descendants it waited for.
    pub max_rss_kib: u64,
}

/// Writes `input` to the child's stdin (then closes it) while reading its
/// stdout and stderr to end-of-file. Returns (stdout, stderr).
///
/// A child that exits without reading stdin is fine: the resulting EPIPE
/// just ends the writing. If the pipes are still open at `deadline`, fails
/// with `ErrorKind::TimedOut` (the caller then kills the child).
pub(crate) fn communicate(
    stdin: Option<ChildStdin>,
    input: &[u8],
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    deadline: Instant,
) -> io::Result<(Vec<u8>, Vec<u8>)> {
    // Nothing to send: close the pipe now, or the child waits for EOF forever.
    let mut stdin = if input.is_empty() {
        drop(stdin);
        None
    } else {
        stdin
    };
    let mut stdout = stdout;
    let mut stderr = stderr;
    for fd in [
        stdin.as_ref().map(AsRawFd::as_raw_fd),
        stdout.as_ref().map(AsRawFd::as_raw_fd),
        stderr.as_ref().map(AsRawFd::as_raw_fd),
    ]
    .into_iter()
    .flatten()
    {
        set_nonblocking(fd)?;
    }
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let mut written = 0;
    while stdin.is_some() || stdout.is_some() || stderr.is_some() {
        let mut fds = Vec::with_capacity(3);
        if let Some(s) = &stdin {
            fds.push(pollfd(s.as_raw_fd(), libc::POLLOUT));
        }
        if let Some(s) = &stdout {
            fds.push(pollfd(s.as_raw_fd(), libc::POLLIN));
        }
        if let Some(s) = &stderr {
            fds.push(pollfd(s.as_raw_fd(), libc::POLLIN));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "child still running at the deadline; stderr so far: {}",
                    String::from_utf8_lossy(&err)
                ),
            ));
        }
        // Round up so we never spin with a zero timeout just before the end.
        let ms = libc::c_int::try_from(left.as_millis() + 1).unwrap_or(libc::c_int::MAX);
        // SAFETY: `fds` is a valid, initialised array of `fds.len()` pollfds.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let ready = |fd: RawFd| fds.iter().any(|p| p.fd == fd && p.revents != 0);
        if stdin.as_ref().is_some_and(|s| ready(s.as_raw_fd())) {
            if let Some(s) = stdin.as_mut() {
                match s.write(&input[written..]) {
                    Ok(k) => written += k,
                    Err(e) if retryable(&e) => {}
                    // EPIPE: the child closed stdin (or exited); stop feeding.
                    Err(e) if e.kind() == io::ErrorKind::BrokenPipe => written = input.len(),
                    Err(e) => return Err(e),
                }
            }
            if written >= input.len() {
                // Dropping closes the pipe: the child sees end-of-file.
                stdin = None;
            }
        }
        if stdout.as_ref().is_some_and(|s| ready(s.as_raw_fd())) && drain(&mut stdout, &mut out)? {
            stdout = None;
        }
        if stderr.as_ref().is_some_and(|s| ready(s.as_raw_fd())) && drain(&mut stderr, &mut err)? {
            stderr = None;
        }
    }
    Ok((out, err))
}

/// Reads what is available; returns true at end-of-file.
fn drain<R: Read>(src: &mut Option<R>, buf: &mut Vec<u8>) -> io::Result<bool> {
    let Some(r) = src.as_mut() else {
        return Ok(true);
    };
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match r.read(&mut chunk) {
            Ok(0) => return Ok(true),
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
            Err(e) if retryable(&e) => return Ok(false),
            Err(e) => return Err(e),
        }
    }
}

fn retryable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

fn pollfd(fd: RawFd, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own, with integer arguments only.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reaps `child` with `wait4`, blocking until it exits.
///
/// `child` must not have been waited for. Afterwards it must not be waited
/// for through std either (its pid is gone).
pub(crate) fn reap(child: &Child) -> io::Result<Reaped> {
    let pid = libc::pid_t::try_from(child.id())
        .map_err(|_| io::Error::other("child pid out of range"))?;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: valid pointers to live locals; pid is our unreaped child.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let e = io::Error::last_os_error();
        if r < 0 && e.kind() == io::ErrorKind::Interrupted {
            continue;
        }
        return Err(e);
    }
    let exit_code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        -1
    };
    Ok(Reaped {
        exit_code,
        // Linux reports ru_maxrss in KiB; it is never negative.
        max_rss_kib: u64::try_from(usage.ru_maxrss).unwrap_or(0),
    })
}

/// Kills `child`'s whole process group (the child was made a group leader,
/// so this includes helpers it spawned, e.g. an IPAM plugin) and reaps the
/// child, so no zombie or stray process outlives a failed call. Errors are
/// ignored: this is already an error path.
pub(crate) fn kill_and_reap(child: &mut Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: plain syscall; a negative pid addresses the process group
        // whose id is our (not yet reaped, so not reused) child's pid.
        unsafe { libc::kill(-pid, libc::SIGKILL) };
    }
    let _ = child.kill();
    let _ = reap(child);
}
