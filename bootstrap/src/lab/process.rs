//! Processes the lab starts, recognised again later and stopped without
//! ever hitting a stranger.
//!
//! A pid alone is not an identity: after a restart or a crash, a recorded
//! pid may belong to an unrelated process. A process is therefore recorded
//! as (pid, start time), the start time being field 22 of
//! `/proc/<pid>/stat`, and it is signalled through a pidfd opened *before*
//! the start time is checked, so the check and the signal are about the
//! same process.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A process, recognisable again later.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessId {
    /// Its pid.
    pub pid: i32,
    /// Its start time in clock ticks since boot (`/proc/<pid>/stat` field
    /// 22).
    pub start_time: u64,
}

impl ProcessId {
    /// The process with `pid` as it is now, if it exists.
    pub fn of(pid: i32) -> Option<ProcessId> {
        let (start_time, _) = stat(pid)?;
        Some(ProcessId { pid, start_time })
    }

    /// True if this very process still runs (exists, is not a zombie, and
    /// its pid was not reused).
    pub fn is_running(&self) -> bool {
        matches!(stat(self.pid), Some((start, state)) if start == self.start_time && state != 'Z' && state != 'X')
    }
}

/// `(start time, state)` from `/proc/<pid>/stat`.
fn stat(pid: i32) -> Option<(u64, char)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) is in parentheses
/// and may itself contain spaces and parentheses, so fields are counted
/// from the last `)`.
fn parse_stat(text: &str) -> Option<(u64, char)> {
    let after_comm = &text[text.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace();
    // Field 3 is the state; field 22 is 19 further on.
    let state = fields.next()?.chars().next()?;
    let start_time = fields.nth(18)?.parse().ok()?;
    Some((start_time, state))
}

/// Sends SIGTERM to `process`, then SIGKILL if it is still there after
/// `grace`, and waits (up to a few seconds) until it has exited.
///
/// A process that is gone, or whose pid now belongs to another process, is
/// left alone and counts as stopped.
pub fn stop(process: &ProcessId, grace: Duration) -> io::Result<()> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, process.pid, 0) };
    if fd < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ESRCH) => Ok(()),
            _ => Err(err),
        };
    }
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("pidfd out of range"))?;
    // SAFETY: fd was just returned by pidfd_open and is owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd) };
    // The pidfd now pins the process: if it is still the recorded one, every
    // signal below reaches it and nothing else.
    if !process.is_running() {
        return Ok(());
    }
    send_signal(&pidfd, libc::SIGTERM)?;
    if wait_exit(&pidfd, grace)? {
        return Ok(());
    }
    send_signal(&pidfd, libc::SIGKILL)?;
    if wait_exit(&pidfd, Duration::from_secs(5))? {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "process {} survived SIGKILL for 5 s",
            process.pid
        )))
    }
}

fn send_signal(pidfd: &OwnedFd, signal: i32) -> io::Result<()> {
    // SAFETY: pidfd_send_signal on a pidfd we own, no siginfo, no flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        // Exited in the meantime.
        Some(libc::ESRCH) => Ok(()),
        _ => Err(err),
    }
}

/// Waits until the process behind `pidfd` has exited (a pidfd turns
/// readable then); false on timeout.
fn wait_exit(pidfd: &OwnedFd, timeout: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut poll = libc::pollfd {
            fd: pidfd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = i32::try_from(left.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd, its count, and a timeout.
        let rc = unsafe { libc::poll(&mut poll, 1, millis) };
        if rc > 0 {
            return Ok(true);
        }
        if rc == 0 {
            // poll's timeout may end a little before our deadline (its
            // clock is not Instant's): only a deadline passed is a timeout.
            if Instant::now() >= deadline {
                return Ok(false);
            }
            continue;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "4242 (pod (x) y) S 1 4242 4242 0 -1 4194560 150 0 0 0 \
                    1 2 0 0 20 0 1 0 987654 11111 222 18446744073709551615";
        assert_eq!(parse_stat(line), Some((987_654, 'S')));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn a_process_is_known_by_pid_and_start_time() {
        let me = ProcessId::of(std::process::id() as i32).unwrap();
        assert!(me.is_running());
        let impostor = ProcessId {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!impostor.is_running());
        // Stopping a process that is not the recorded one does nothing.
        stop(&impostor, Duration::from_millis(10)).unwrap();
        assert!(me.is_running());
    }

    #[test]
    fn stop_terminates_and_then_kills() {
        let mut polite = Command::new("sleep").arg("30").spawn().unwrap();
        let id = ProcessId::of(polite.id() as i32).unwrap();
        stop(&id, Duration::from_secs(5)).unwrap();
        assert!(!id.is_running());
        polite.wait().unwrap();

        // Ignores SIGTERM: needs the SIGKILL.
        // The ignored SIGTERM survives the exec, so the sleep itself is the
        // stubborn one and no grandchild is left behind.
        let mut stubborn = Command::new("sh")
            .args(["-c", "trap '' TERM; echo ready; exec sleep 30"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut ready = [0u8; 6];
        std::io::Read::read_exact(stubborn.stdout.as_mut().unwrap(), &mut ready).unwrap();
        let id = ProcessId::of(stubborn.id() as i32).unwrap();
        let start = Instant::now();
        stop(&id, Duration::from_millis(200)).unwrap();
        let elapsed = start.elapsed();
        let status = stubborn.wait().unwrap();
        assert!(
            elapsed >= Duration::from_millis(200),
            "stopped after {elapsed:?} with {status:?}"
        );
        assert!(!status.success());
    }
}
