//! Per-pod tailnet identities: pods that opt in by annotation get a
//! tailnet device of their own, a tailscaled running inside the pod's
//! network namespace.
//!
//! The concepts, one module each:
//! - [`policy`]: who may have one, with which tags and name;
//! - [`launch`]: starting a program inside a pod (`run-in-pod`);
//! - [`plan`]: what to do, from the pods, the CNI attachment records and
//!   the identities on disk;
//! - [`instance`]: one identity on disk (its directory and record) and its
//!   tailscaled process, started, adopted after an agent restart, stopped.

pub mod instance;
pub mod launch;
pub mod manager;
pub mod plan;
pub mod policy;
