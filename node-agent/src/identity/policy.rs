//! Which pods may have a tailnet identity of their own, with which tags
//! and under which name.
//!
//! A pod asks with annotations; the cluster's policy (the agent's
//! configuration) answers. The policy is deny-by-default: a namespace not
//! listed may not ask at all, a tag not in its namespace's allowance is
//! refused, and the node tag (which carries the nodes' own ACLs and route
//! approvals) can never be claimed by a pod. Every refusal is a sentence
//! an operator can act on; it goes into an Event on the pod.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The annotation a pod opts in with (`"true"`).
pub const IDENTITY: &str = "tailroute.dev/identity";
/// Comma-separated tags the pod asks for; absent: its namespace's defaults.
pub const IDENTITY_TAGS: &str = "tailroute.dev/identity-tags";
/// The device name the pod asks for; absent: `<cluster>-<namespace>-<pod>`.
pub const IDENTITY_HOSTNAME: &str = "tailroute.dev/identity-hostname";

/// The longest DNS label, and so the longest tailnet device name.
const MAX_HOSTNAME: usize = 63;

/// One namespace's allowance.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceAllowance {
    /// The tags its pods may request.
    pub tags: Vec<String>,
    /// The tags a pod gets when it names none (a subset of `tags`).
    pub default_tags: Vec<String>,
}

/// The cluster's policy for per-pod identities.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdentityPolicy {
    /// The first part of every generated device name.
    pub cluster_name: String,
    /// The tag the nodes carry: never granted to a pod.
    pub node_tag: String,
    /// Namespace name to its allowance; a namespace not here may not ask.
    pub namespaces: BTreeMap<String, NamespaceAllowance>,
}

/// What a pod gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Its device name on the tailnet.
    pub hostname: String,
    /// Its tags, sorted.
    pub tags: Vec<String>,
}

/// Why a pod does not get what it asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    /// A short CamelCase reason for the Event.
    pub reason: &'static str,
    /// What is wrong and what to do.
    pub message: String,
}

/// A pod's request, as read from its annotations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodRequest<'a> {
    /// Its namespace.
    pub namespace: &'a str,
    /// Its name.
    pub name: &'a str,
    /// Its annotations.
    pub annotations: &'a BTreeMap<String, String>,
}

impl PodRequest<'_> {
    /// Whether the pod opted in.
    pub fn wants_identity(&self) -> bool {
        self.annotations.get(IDENTITY).map(|v| v.trim()) == Some("true")
    }
}

impl IdentityPolicy {
    /// Checks the policy itself: every default tag allowed, every tag
    /// well-formed, the node tag granted to no namespace.
    pub fn check(&self) -> Result<(), String> {
        for (namespace, allowance) in &self.namespaces {
            for tag in allowance.tags.iter().chain(&allowance.default_tags) {
                check_tag(tag).map_err(|e| format!("identity policy for {namespace}: {e}"))?;
                if *tag == self.node_tag {
                    return Err(format!(
                        "identity policy for {namespace}: {tag} is the node tag; pods must never \
                         carry it (it grants the nodes' ACLs and route approvals). Create a tag \
                         for pods, such as tag:k8s-pod"
                    ));
                }
            }
            if allowance.default_tags.is_empty() {
                return Err(format!(
                    "identity policy for {namespace}: default_tags is empty; give the tags a \
                     pod gets when it asks for none"
                ));
            }
            if let Some(tag) = allowance
                .default_tags
                .iter()
                .find(|t| !allowance.tags.contains(t))
            {
                return Err(format!(
                    "identity policy for {namespace}: default tag {tag} is not in its tags"
                ));
            }
        }
        Ok(())
    }

    /// Decides a pod's request. `None`: the pod did not ask.
    pub fn decide(&self, pod: &PodRequest<'_>) -> Option<Result<Grant, Refusal>> {
        if !pod.wants_identity() {
            return None;
        }
        Some(self.grant(pod))
    }

    fn grant(&self, pod: &PodRequest<'_>) -> Result<Grant, Refusal> {
        let allowance = self.namespaces.get(pod.namespace).ok_or_else(|| Refusal {
            reason: "IdentityNamespaceNotAllowed",
            message: format!(
                "namespace {} may not have pods with tailnet identities; an administrator can \
                 allow it in the agent's [identity] policy",
                pod.namespace
            ),
        })?;
        let mut tags: Vec<String> = match pod.annotations.get(IDENTITY_TAGS) {
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect(),
            None => allowance.default_tags.clone(),
        };
        if tags.is_empty() {
            tags = allowance.default_tags.clone();
        }
        for tag in &tags {
            check_tag(tag).map_err(|message| Refusal {
                reason: "IdentityTagInvalid",
                message: format!("{IDENTITY_TAGS}: {message}"),
            })?;
            if *tag == self.node_tag {
                return Err(Refusal {
                    reason: "IdentityTagNotAllowed",
                    message: format!(
                        "{tag} is the cluster nodes' tag; a pod can never carry it. Ask for one \
                         of {}",
                        allowance.tags.join(", ")
                    ),
                });
            }
            if !allowance.tags.contains(tag) {
                return Err(Refusal {
                    reason: "IdentityTagNotAllowed",
                    message: format!(
                        "namespace {} may not use {tag}; its pods may ask for {}",
                        pod.namespace,
                        allowance.tags.join(", ")
                    ),
                });
            }
        }
        tags.sort();
        tags.dedup();
        let hostname = match pod.annotations.get(IDENTITY_HOSTNAME) {
            Some(asked) => {
                let name = asked.trim();
                if !is_dns_label(name) {
                    return Err(Refusal {
                        reason: "IdentityHostnameInvalid",
                        message: format!(
                            "{IDENTITY_HOSTNAME}: {name:?} is not a valid device name (1-63 of \
                             a-z, 0-9 and '-', not starting or ending with '-')"
                        ),
                    });
                }
                name.to_owned()
            }
            None => generated_hostname(&self.cluster_name, pod.namespace, pod.name),
        };
        Ok(Grant { hostname, tags })
    }
}

/// `<cluster>-<namespace>-<pod>` as a valid DNS label: lowercase, runs of
/// other characters turned into one `-`; when longer than 63 characters it
/// is cut and ends in 8 hex digits of a hash of the whole name, so two long
/// names that share a prefix still differ.
pub fn generated_hostname(cluster: &str, namespace: &str, pod: &str) -> String {
    let full = format!("{cluster}-{namespace}-{pod}");
    let mut label = String::with_capacity(full.len());
    for c in full.chars().map(|c| c.to_ascii_lowercase()) {
        if c.is_ascii_alphanumeric() {
            label.push(c);
        } else if !label.ends_with('-') {
            label.push('-');
        }
    }
    let label = label.trim_matches('-').to_owned();
    if label.len() <= MAX_HOSTNAME && !label.is_empty() {
        return label;
    }
    let hash = format!("{:08x}", fnv1a(full.as_bytes()) as u32);
    let keep = MAX_HOSTNAME - hash.len() - 1;
    let prefix = label
        .get(..keep.min(label.len()))
        .unwrap_or("")
        .trim_end_matches('-');
    if prefix.is_empty() {
        format!("pod-{hash}")
    } else {
        format!("{prefix}-{hash}")
    }
}

/// FNV-1a, 64 bits: a stable hash (std's is randomly seeded per process).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_HOSTNAME
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// A tag as control planes accept it: `tag:` and then letters, digits
/// and `-`.
fn check_tag(tag: &str) -> Result<(), String> {
    let ok = tag.strip_prefix("tag:").is_some_and(|name| {
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{tag:?} is not a tag; tags look like tag:web (letters, digits and '-')"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> IdentityPolicy {
        IdentityPolicy {
            cluster_name: "homelab".into(),
            node_tag: "tag:k8s-node".into(),
            namespaces: BTreeMap::from([(
                "web".to_owned(),
                NamespaceAllowance {
                    tags: vec!["tag:web".into(), "tag:k8s-pod".into()],
                    default_tags: vec!["tag:k8s-pod".into()],
                },
            )]),
        }
    }

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn decide(namespace: &str, pairs: &[(&str, &str)]) -> Option<Result<Grant, Refusal>> {
        let annotations = annotations(pairs);
        policy().decide(&PodRequest {
            namespace,
            name: "api-7d9f-x2",
            annotations: &annotations,
        })
    }

    #[test]
    fn a_pod_that_does_not_ask_gets_nothing() {
        assert_eq!(decide("web", &[]), None);
        assert_eq!(decide("web", &[(IDENTITY, "false")]), None);
    }

    #[test]
    fn an_allowed_request_gets_its_tags_and_a_generated_name() {
        let grant = decide(
            "web",
            &[(IDENTITY, "true"), (IDENTITY_TAGS, "tag:web, tag:k8s-pod")],
        )
        .expect("asked")
        .expect("granted");
        assert_eq!(grant.tags, ["tag:k8s-pod", "tag:web"]);
        assert_eq!(grant.hostname, "homelab-web-api-7d9f-x2");
        let default = decide("web", &[(IDENTITY, "true")])
            .expect("asked")
            .expect("granted");
        assert_eq!(default.tags, ["tag:k8s-pod"]);
        let named = decide("web", &[(IDENTITY, "true"), (IDENTITY_HOSTNAME, "shop")])
            .expect("asked")
            .expect("granted");
        assert_eq!(named.hostname, "shop");
    }

    #[test]
    fn refusals_say_why_and_what_is_allowed() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str, &'a str);
        let cases: [Case; 5] = [
            (
                "db",
                &[(IDENTITY, "true")],
                "IdentityNamespaceNotAllowed",
                "namespace db may not",
            ),
            (
                "web",
                &[(IDENTITY, "true"), (IDENTITY_TAGS, "tag:k8s-node")],
                "IdentityTagNotAllowed",
                "nodes' tag",
            ),
            (
                "web",
                &[(IDENTITY, "true"), (IDENTITY_TAGS, "tag:db")],
                "IdentityTagNotAllowed",
                "may ask for tag:web, tag:k8s-pod",
            ),
            (
                "web",
                &[(IDENTITY, "true"), (IDENTITY_TAGS, "web")],
                "IdentityTagInvalid",
                "is not a tag",
            ),
            (
                "web",
                &[(IDENTITY, "true"), (IDENTITY_HOSTNAME, "Shop_1")],
                "IdentityHostnameInvalid",
                "not a valid device name",
            ),
        ];
        for (namespace, pairs, reason, text) in cases {
            let refusal = decide(namespace, pairs)
                .expect("asked")
                .expect_err("refused");
            assert_eq!(refusal.reason, reason, "{pairs:?}");
            assert!(
                refusal.message.contains(text),
                "{pairs:?}: {}",
                refusal.message
            );
        }
    }

    #[test]
    fn generated_names_are_valid_labels_and_long_ones_stay_distinct() {
        assert_eq!(
            generated_hostname("Lab", "kube_system", "coredns.1"),
            "lab-kube-system-coredns-1"
        );
        let long_a = generated_hostname("c", "n", &format!("{}a", "x".repeat(80)));
        let long_b = generated_hostname("c", "n", &format!("{}b", "x".repeat(80)));
        assert!(long_a.len() <= 63 && long_b.len() <= 63);
        assert_ne!(long_a, long_b);
        assert!(is_dns_label(&long_a), "{long_a}");
        assert_eq!(
            generated_hostname("c", "n", "p"),
            generated_hostname("c", "n", "p")
        );
    }

    #[test]
    fn a_policy_granting_the_node_tag_or_an_unlisted_default_is_refused() {
        let mut p = policy();
        p.namespaces
            .get_mut("web")
            .expect("web")
            .tags
            .push("tag:k8s-node".into());
        assert!(p.check().expect_err("node tag").contains("node tag"));
        let mut p = policy();
        p.namespaces.get_mut("web").expect("web").default_tags = vec!["tag:db".into()];
        assert!(p.check().expect_err("default").contains("not in its tags"));
        assert!(policy().check().is_ok());
    }
}
