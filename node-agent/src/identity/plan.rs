//! What to do for the identities on this node, decided from what is known:
//! the node's pods, the CNI attachment records and the identities on disk.
//! Pure, so every case is a unit test; [`super::manager`] carries it out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use tailroute_bridge::attachment::Attachment;

use super::instance::Instance;
use super::policy::{Grant, IdentityPolicy, PodRequest, Refusal};

/// A pod on this node, as far as identities care.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    /// Its UID.
    pub uid: String,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its annotations.
    pub annotations: BTreeMap<String, String>,
    /// It finished (phase Succeeded or Failed): its sandbox is going away.
    pub finished: bool,
    /// It is being deleted (has a deletionTimestamp).
    pub terminating: bool,
    /// It uses the node's network namespace.
    pub host_network: bool,
}

/// One thing to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The pod should have a running, joined identity in `netns`.
    Ensure {
        /// The pod.
        pod: PodView,
        /// What it was granted.
        grant: Grant,
        /// Its network namespace (from its attachment record).
        netns: PathBuf,
        /// Its interface in that namespace, and the host end of its veth.
        link: (String, String),
    },
    /// The pod asked and may not: say why, on the pod.
    Refuse {
        /// The pod.
        pod: PodView,
        /// Why.
        refusal: Refusal,
    },
    /// The pod may have an identity but its network is not there yet (the
    /// runtime has not called the plugin): nothing to do until it is.
    Wait {
        /// The pod.
        pod: PodView,
    },
    /// This identity's pod is gone, finished, no longer asks, or lost its
    /// network while being deleted: remove the device and the identity.
    Remove {
        /// The identity.
        instance: Instance,
        /// Why, for the log and the metrics.
        why: &'static str,
    },
}

/// Decides every step, pods first (in the order given), then removals.
pub fn plan(
    policy: &IdentityPolicy,
    pods: &[PodView],
    attachments: &[Attachment],
    instances: &[Instance],
) -> Vec<Step> {
    let netns_of = |uid: &str| {
        attachments
            .iter()
            .filter(|a| a.pod.as_ref().and_then(|p| p.uid.as_deref()) == Some(uid))
            .find_map(|a| Some((a.netns.clone()?, (a.ifname.clone(), a.host_veth.clone()))))
    };
    let mut steps = Vec::new();
    let mut keep = BTreeSet::new();
    for pod in pods {
        let request = PodRequest {
            namespace: &pod.namespace,
            name: &pod.name,
            annotations: &pod.annotations,
        };
        let Some(decision) = policy.decide(&request) else {
            continue;
        };
        if pod.finished {
            continue;
        }
        let grant = match decision {
            Ok(_) if pod.host_network => {
                let refusal = Refusal {
                    reason: "IdentityHostNetwork",
                    message: "a hostNetwork pod shares the node's network and its tailnet \
                              address; it cannot have an identity of its own (drop \
                              hostNetwork, or drop the annotation)"
                        .to_owned(),
                };
                steps.push(Step::Refuse {
                    pod: pod.clone(),
                    refusal,
                });
                continue;
            }
            Ok(grant) => grant,
            Err(refusal) => {
                steps.push(Step::Refuse {
                    pod: pod.clone(),
                    refusal,
                });
                continue;
            }
        };
        match netns_of(&pod.uid) {
            // Being deleted, network still there: the identity serves until
            // the network goes, but is never (re)started for a pod on its
            // way out.
            Some(_) if pod.terminating => {
                keep.insert(pod.uid.clone());
            }
            Some((netns, link)) => {
                keep.insert(pod.uid.clone());
                steps.push(Step::Ensure {
                    pod: pod.clone(),
                    grant,
                    netns,
                    link,
                });
            }
            // Its sandbox is gone and it is being deleted: it will not
            // come back, so neither does the identity.
            None if pod.terminating => {}
            None => {
                // A sandbox being (re)created: keep what exists, so the
                // device and its addresses survive.
                keep.insert(pod.uid.clone());
                steps.push(Step::Wait { pod: pod.clone() });
            }
        }
    }
    for instance in instances {
        if keep.contains(&instance.record.pod_uid) {
            continue;
        }
        let pod = pods.iter().find(|p| p.uid == instance.record.pod_uid);
        let why = match pod {
            None => "the pod is gone",
            Some(p) if p.finished => "the pod finished",
            Some(p) if p.terminating => "the pod is being deleted and its network is gone",
            Some(_) => "the pod no longer has (or may no longer have) an identity",
        };
        steps.push(Step::Remove {
            instance: instance.clone(),
            why,
        });
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::instance::IdentityRecord;
    use crate::identity::policy::{NamespaceAllowance, IDENTITY, IDENTITY_TAGS};
    use tailroute_bridge::attachment::PodRef;

    fn policy() -> IdentityPolicy {
        let mut namespaces = BTreeMap::new();
        namespaces.insert(
            "default".to_owned(),
            NamespaceAllowance {
                tags: vec!["tag:k8s-pod".into(), "tag:web".into()],
                default_tags: vec!["tag:k8s-pod".into()],
            },
        );
        IdentityPolicy {
            cluster_name: "lab".into(),
            node_tag: "tag:k8s-node".into(),
            namespaces,
        }
    }

    fn pod(uid: &str, namespace: &str, annotations: &[(&str, &str)]) -> PodView {
        PodView {
            uid: uid.into(),
            namespace: namespace.into(),
            name: format!("p{uid}"),
            annotations: annotations
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            finished: false,
            terminating: false,
            host_network: false,
        }
    }

    fn attachment(uid: &str) -> Attachment {
        Attachment {
            container_id: format!("c{uid}"),
            ifname: "eth0".into(),
            netns: Some(format!("/run/netns/{uid}").into()),
            host_veth: "trv".into(),
            ips: vec![],
            pod: Some(PodRef {
                namespace: Some("default".into()),
                name: Some(format!("p{uid}")),
                uid: Some(uid.into()),
            }),
            created_unix: 0,
        }
    }

    fn instance(uid: &str) -> Instance {
        Instance {
            dir: format!("/state/{uid}").into(),
            record: IdentityRecord {
                pod_uid: uid.into(),
                namespace: "default".into(),
                name: format!("p{uid}"),
                hostname: format!("lab-default-p{uid}"),
                tags: vec!["tag:k8s-pod".into()],
                netns: format!("/run/netns/{uid}").into(),
                pid: None,
                pid_start: None,
                device_id: None,
                ips: vec![],
                dns_name: String::new(),
            },
        }
    }

    fn kinds(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .map(|s| match s {
                Step::Ensure { pod, netns, .. } => {
                    format!("ensure {} {}", pod.uid, netns.display())
                }
                Step::Refuse { pod, refusal } => format!("refuse {} {}", pod.uid, refusal.reason),
                Step::Wait { pod } => format!("wait {}", pod.uid),
                Step::Remove { instance, why } => {
                    format!("remove {} ({why})", instance.record.pod_uid)
                }
            })
            .collect()
    }

    #[test]
    fn pods_that_ask_get_ensured_refused_or_wait_and_others_are_left_alone() {
        let pods = [
            pod("a", "default", &[(IDENTITY, "true")]),
            pod(
                "b",
                "default",
                &[(IDENTITY, "true"), (IDENTITY_TAGS, "tag:k8s-node")],
            ),
            pod("c", "other", &[(IDENTITY, "true")]),
            pod("d", "default", &[(IDENTITY, "true")]),
            pod("e", "default", &[]),
            PodView {
                host_network: true,
                ..pod("f", "default", &[(IDENTITY, "true")])
            },
        ];
        let attachments = [attachment("a"), attachment("b"), attachment("e")];
        assert_eq!(
            kinds(&plan(&policy(), &pods, &attachments, &[])),
            [
                "ensure a /run/netns/a",
                "refuse b IdentityTagNotAllowed",
                "refuse c IdentityNamespaceNotAllowed",
                "wait d",
                "refuse f IdentityHostNetwork",
            ]
        );
    }

    #[test]
    fn identities_go_when_their_pod_does_and_stay_while_a_sandbox_is_remade() {
        let pods = [
            // Sandbox being recreated: keep.
            pod("a", "default", &[(IDENTITY, "true")]),
            // Deleted, network gone: remove.
            PodView {
                terminating: true,
                ..pod("b", "default", &[(IDENTITY, "true")])
            },
            // Deleted but still running: keep serving until its network goes.
            PodView {
                terminating: true,
                ..pod("c", "default", &[(IDENTITY, "true")])
            },
            PodView {
                finished: true,
                ..pod("d", "default", &[(IDENTITY, "true")])
            },
            // The annotation was removed.
            pod("e", "default", &[]),
        ];
        let instances = ["a", "b", "c", "d", "e", "gone"].map(instance);
        let steps = plan(&policy(), &pods, &[attachment("c")], &instances);
        assert_eq!(
            kinds(&steps),
            [
                "wait a",
                "remove b (the pod is being deleted and its network is gone)",
                "remove d (the pod finished)",
                "remove e (the pod no longer has (or may no longer have) an identity)",
                "remove gone (the pod is gone)",
            ]
        );
    }
}
