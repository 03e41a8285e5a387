//! Running a batch of plugin calls, serially or with worker threads.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cni_testbed::{invoke, Netns, PluginCall};

use crate::interrupt::interrupted;

/// Outcome of one batch: per-call results in call order, and wall time.
pub struct Batch {
    /// `results[i]` belongs to `calls[i]`; harness errors (including calls
    /// skipped after an interrupt) are `Err`.
    pub results: Vec<io::Result<cni_testbed::PluginOutput>>,
    /// From before the first call started to after the last one ended.
    pub wall: Duration,
}

/// Runs `calls` against `plugin` on `node` with `workers` threads pulling
/// the next call from a shared index (1 = strictly one after another).
pub fn run(plugin: &Path, node: &Netns, calls: &[PluginCall], workers: usize) -> Batch {
    let next = AtomicUsize::new(0);
    // Each worker returns (index, result) pairs; merged afterwards so the
    // hot loop takes no lock.
    let work = || {
        let mut mine = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(call) = calls.get(i) else { break };
            let r = if interrupted() {
                Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"))
            } else {
                invoke(plugin, node, call)
            };
            mine.push((i, r));
        }
        mine
    };
    let start = Instant::now();
    let parts: Vec<_> = if workers <= 1 {
        vec![work()]
    } else {
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers).map(|_| s.spawn(work)).collect();
            handles
                .into_iter()
                .map(|h| match h.join() {
                    Ok(v) => v,
                    // A worker panic is a harness bug: re-raise it here so
                    // guards up the stack still run.
                    Err(p) => std::panic::resume_unwind(p),
                })
                .collect()
        })
    };
    let wall = start.elapsed();
    let mut slots: Vec<Option<io::Result<_>>> = (0..calls.len()).map(|_| None).collect();
    for (i, r) in parts.into_iter().flatten() {
        slots[i] = Some(r);
    }
    let results = slots
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(io::Error::other("call was not run"))))
        .collect();
    Batch { results, wall }
}
