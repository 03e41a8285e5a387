//! Per-pod tailnet identities (issue 6, in progress): pods that opt in by
//! annotation get a tailnet device of their own. So far: the policy that
//! decides who may have one, with which tags and name ([`policy`]). The
//! runtime (a tailscaled in the pod's network namespace, keys minted per
//! pod, lifecycle and reporting) is not built yet, and the agent does not
//! act on the annotations.

pub mod policy;
