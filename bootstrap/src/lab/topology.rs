//! Building a [`TopologyPlan`] on the host (`up`), removing it (`down`) and
//! reporting what exists (`status`).
//!
//! `up` first turns the plan into a script of [`Step`]s, a pure function
//! that the unit tests read, then runs it. A step that creates something
//! records it in the [`Ledger`] before running its command, so a `down`
//! after a killed `up` finds everything.
//!
//! Every command names its namespace (`ip -n`, `ip netns exec`): apart from
//! the namespace files themselves, nothing is created in the host's own
//! network namespace, and the underlay has no uplink, so no lab packet can
//! leave the lab.

use std::path::PathBuf;

use crate::command::{CommandError, HostCommand};
use crate::lab::ledger::{Ledger, LedgerError, Teardown, TeardownError};
use crate::lab::plan::{Cidr, Interface, Router, TopologyPlan};
use crate::lab::resource::{namespace_exists, namespaces_with_prefix, Resource};

/// Why `up` stopped. Whatever was created is in the ledger: `down` removes it.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    /// A namespace the plan needs exists already, made by someone else (a
    /// lab whose state was lost, or a name clash). It is not recorded, so
    /// `down` will not touch it.
    #[error(
        "namespace {namespace} already exists but is not in this lab's ledger: \
         another lab uses tag {tag:?}, or its state was lost; pick another tag or \
         remove it (`ip netns del {namespace}`) if it is a leftover"
    )]
    NameTaken {
        /// The existing namespace.
        namespace: String,
        /// The lab tag.
        tag: String,
    },
    /// The ledger could not be written, so the next resource was not created.
    #[error("could not record {resource} before creating it: {source}")]
    Ledger {
        /// What was about to be created.
        resource: Resource,
        /// The ledger failure.
        source: LedgerError,
    },
    /// A command of the script failed.
    #[error(
        "lab up failed at step {step} of {total}: {source}; what was created so far is \
         listed in {}: run `tailroute lab down` to remove it",
        ledger.display()
    )]
    Command {
        /// 1-based number of the failed step.
        step: usize,
        /// Number of steps in the script.
        total: usize,
        /// The ledger listing what exists.
        ledger: PathBuf,
        /// The failure.
        source: CommandError,
    },
    /// The test hook of [`up_with_fault`] fired.
    #[error("injected fault after {actions} action(s) (test hook): the lab is half built")]
    InjectedFault {
        /// Actions performed before stopping.
        actions: usize,
    },
}

/// One step of `up`: a command, and what it creates, if anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    creates: Option<Resource>,
    command: HostCommand,
}

impl Step {
    fn create(resource: Resource, command: HostCommand) -> Step {
        Step {
            creates: Some(resource),
            command,
        }
    }

    fn configure(command: HostCommand) -> Step {
        Step {
            creates: None,
            command,
        }
    }

    /// What this step creates (recorded in the ledger before it runs).
    pub fn creates(&self) -> Option<&Resource> {
        self.creates.as_ref()
    }

    /// The command the step runs.
    pub fn command(&self) -> &HostCommand {
        &self.command
    }
}

/// The steps that build `plan`, in order.
pub fn script(plan: &TopologyPlan) -> Vec<Step> {
    let mut steps = Vec::new();
    for namespace in plan.namespaces() {
        steps.push(Step::create(
            Resource::Namespace {
                name: namespace.to_owned(),
            },
            HostCommand::new("ip", &["netns", "add", namespace]),
        ));
        steps.push(Step::configure(HostCommand::ip_in(
            namespace,
            &["link", "set", "lo", "up"],
        )));
    }

    // The underlay must never route: it is "the internet" for the lab and
    // a sink for everything outside it. New namespaces start with
    // forwarding off, but `net.core.devconf_inherit_init_net` can make
    // them copy the host's setting, so say it explicitly.
    let underlay = &plan.underlay;
    steps.push(Step::configure(forwarding(
        &underlay.namespace,
        false,
        plan.dual_stack,
    )));
    steps.push(Step::create(
        Resource::Link {
            namespace: underlay.namespace.clone(),
            name: underlay.bridge.name.clone(),
        },
        // No STP: a loop-free bridge whose ports forward at once.
        HostCommand::ip_in(
            &underlay.namespace,
            &[
                "link",
                "add",
                &underlay.bridge.name,
                "type",
                "bridge",
                "stp_state",
                "0",
            ],
        ),
    ));
    steps.extend(address_steps(&underlay.bridge));

    for veth in &plan.veths {
        steps.push(Step::create(
            Resource::Link {
                namespace: veth.first.namespace.clone(),
                name: veth.first.name.clone(),
            },
            // Both ends are born in their namespaces: nothing ever appears
            // in the host's namespace, even for an instant.
            HostCommand::ip_in(
                &veth.first.namespace,
                &[
                    "link",
                    "add",
                    &veth.first.name,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &veth.peer.name,
                    "netns",
                    &veth.peer.namespace,
                ],
            ),
        ));
        if veth.peer_on_bridge {
            steps.push(Step::configure(HostCommand::ip_in(
                &veth.peer.namespace,
                &[
                    "link",
                    "set",
                    &veth.peer.name,
                    "master",
                    &underlay.bridge.name,
                    "up",
                ],
            )));
        }
    }

    let hosts = std::iter::once(&plan.control_plane).chain(plan.nodes.iter().map(|n| &n.host));
    for router in plan.routers() {
        steps.extend(address_steps(&router.wan));
        steps.extend(address_steps(&router.lan));
        steps.extend(default_routes(
            &router.namespace,
            router.gateway4.to_string(),
            router.gateway6.map(|g| g.to_string()),
        ));
        steps.push(Step::configure(forwarding(
            &router.namespace,
            true,
            plan.dual_stack,
        )));
        steps.push(Step::create(
            Resource::NftTable {
                namespace: router.namespace.clone(),
                family: "inet".into(),
                name: router.nat_table.clone(),
            },
            HostCommand::exec_in(&router.namespace, "nft", &["-f", "-"])
                .with_stdin(nat_ruleset(router)),
        ));
    }
    for host in hosts {
        steps.extend(address_steps(&host.uplink));
        steps.extend(default_routes(
            &host.namespace,
            host.gateway4.to_string(),
            host.gateway6.map(|g| g.to_string()),
        ));
    }
    steps
}

/// Addresses, then link up.
fn address_steps(iface: &Interface) -> Vec<Step> {
    let mut steps: Vec<Step> = iface
        .addresses()
        .iter()
        .map(|cidr| Step::configure(add_address(iface, cidr)))
        .collect();
    steps.push(Step::configure(HostCommand::ip_in(
        &iface.namespace,
        &["link", "set", &iface.name, "up"],
    )));
    steps
}

fn add_address(iface: &Interface, cidr: &Cidr) -> HostCommand {
    let cidr = cidr.to_string();
    let mut args = vec!["addr", "add", &cidr, "dev", &iface.name];
    if cidr.contains(':') {
        // Skip duplicate address detection: addresses are unique by
        // construction, and DAD would leave them unusable ("tentative")
        // for the first second or two after `up`.
        args.push("nodad");
    }
    HostCommand::ip_in(&iface.namespace, &args)
}

fn default_routes(namespace: &str, gateway4: String, gateway6: Option<String>) -> Vec<Step> {
    let mut steps = vec![Step::configure(HostCommand::ip_in(
        namespace,
        &["route", "add", "default", "via", &gateway4],
    ))];
    if let Some(gateway6) = gateway6 {
        steps.push(Step::configure(HostCommand::ip_in(
            namespace,
            &["-6", "route", "add", "default", "via", &gateway6],
        )));
    }
    steps
}

fn forwarding(namespace: &str, on: bool, ipv6: bool) -> HostCommand {
    let value = u8::from(on);
    let mut args = vec![format!("net.ipv4.ip_forward={value}")];
    if ipv6 {
        args.push(format!("net.ipv6.conf.all.forwarding={value}"));
    }
    let mut all = vec!["-q".to_owned(), "-w".to_owned()];
    all.extend(args);
    HostCommand::exec_in(namespace, "sysctl", &all)
}

/// The router's nftables table: a home NAT box. The LAN is masqueraded to
/// the WAN address; from the WAN side only replies get in, so no one on
/// the underlay (another node's router included) can open a connection to
/// the node's private address.
///
/// Unsolicited UDP from the WAN is dropped on input, as a home router's
/// firewall does. Besides realism this matters for NAT traversal: a peer's
/// first hole-punching packet would otherwise be accepted for local
/// delivery, and its conntrack entry would take the WAN port the node's own
/// outgoing flow needs, so the masquerade picks another port and the
/// direct path never forms (the tailnet stays on the DERP relay).
fn nat_ruleset(router: &Router) -> String {
    let wan = &router.wan.name;
    let lan = &router.lan.name;
    let mut masquerade = format!(
        "\t\toifname \"{wan}\" ip saddr {} counter masquerade\n",
        router.lan.ipv4.network()
    );
    if let Some(lan6) = router.lan.ipv6 {
        masquerade.push_str(&format!(
            "\t\toifname \"{wan}\" ip6 saddr {} counter masquerade\n",
            lan6.network()
        ));
    }
    format!(
        "table inet {table} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         {masquerade}\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy drop;\n\
         \t\tct state established,related accept\n\
         \t\tiifname \"{lan}\" oifname \"{wan}\" accept\n\
         \t}}\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority filter; policy accept;\n\
         \t\tiifname \"{wan}\" meta l4proto udp ct state new drop\n\
         \t}}\n\
         }}\n",
        table = router.nat_table,
    )
}

/// Builds `plan`, recording everything in `ledger` before creating it.
///
/// On failure the half-built lab stays as it is (useful for looking at
/// what went wrong) and the ledger lists all of it: [`down`] removes it.
pub fn up(plan: &TopologyPlan, ledger: &mut Ledger) -> Result<(), UpError> {
    run_script(plan, ledger, None)
}

/// [`up`] that stops as if killed after `stop_after` actions, for tests of
/// teardown after an interrupted `up`.
///
/// Recording a step in the ledger is one action and running its command is
/// another, so an odd `stop_after` may stop between recording something
/// and creating it, the hardest case for `down`.
pub fn up_with_fault(
    plan: &TopologyPlan,
    ledger: &mut Ledger,
    stop_after: usize,
) -> Result<(), UpError> {
    run_script(plan, ledger, Some(stop_after))
}

fn run_script(
    plan: &TopologyPlan,
    ledger: &mut Ledger,
    stop_after: Option<usize>,
) -> Result<(), UpError> {
    // Record-before-create would make `down` delete a namespace of the
    // same name that is not ours; refuse before touching anything.
    for namespace in plan.namespaces() {
        if namespace_exists(namespace) && !records_namespace(ledger, namespace) {
            return Err(UpError::NameTaken {
                namespace: namespace.to_owned(),
                tag: plan.tag.to_string(),
            });
        }
    }
    let steps = script(plan);
    let total = steps.len();
    let mut actions = 0;
    let act = |actions: &mut usize| {
        if stop_after == Some(*actions) {
            return Err(UpError::InjectedFault { actions: *actions });
        }
        *actions += 1;
        Ok(())
    };
    for (i, step) in steps.into_iter().enumerate() {
        if let Some(resource) = step.creates {
            act(&mut actions)?;
            ledger
                .record(resource.clone())
                .map_err(|source| UpError::Ledger { resource, source })?;
        }
        act(&mut actions)?;
        step.command.run().map_err(|source| UpError::Command {
            step: i + 1,
            total,
            ledger: ledger.path(),
            source,
        })?;
    }
    Ok(())
}

fn records_namespace(ledger: &Ledger, namespace: &str) -> bool {
    ledger
        .resources()
        .iter()
        .any(|r| matches!(r, Resource::Namespace { name } if name == namespace))
}

/// Removes everything `ledger` lists, newest first; see [`Ledger::teardown`].
pub fn down(ledger: Ledger) -> Result<Teardown, TeardownError> {
    ledger.teardown()
}

/// What exists of a lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabStatus {
    /// Every ledger entry and whether it exists now (`Err`: could not tell).
    pub recorded: Vec<(Resource, Result<bool, String>)>,
    /// Namespaces with the lab's prefix that the ledger does not list
    /// (should never happen; a sign of lost state).
    pub unrecorded_namespaces: Vec<String>,
}

impl LabStatus {
    /// True when nothing of the lab exists (or might exist).
    pub fn is_gone(&self) -> bool {
        self.unrecorded_namespaces.is_empty()
            && self.recorded.iter().all(|(_, exists)| exists == &Ok(false))
    }
}

/// Reports what exists of the lab with `name_prefix` (see
/// [`crate::lab::LabTag::name_prefix`]) and ledger `ledger` (`None`: no
/// state directory).
pub fn status(name_prefix: &str, ledger: Option<&Ledger>) -> std::io::Result<LabStatus> {
    let recorded: Vec<(Resource, Result<bool, String>)> = ledger
        .map(|l| l.resources())
        .unwrap_or_default()
        .iter()
        .map(|r| (r.clone(), r.exists().map_err(|e| e.to_string())))
        .collect();
    let unrecorded_namespaces = namespaces_with_prefix(name_prefix)?
        .into_iter()
        .filter(|ns| !ledger.is_some_and(|l| records_namespace(l, ns)))
        .collect();
    Ok(LabStatus {
        recorded,
        unrecorded_namespaces,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::plan::{LabTag, TopologyMode};

    fn plans() -> Vec<TopologyPlan> {
        let mut plans = Vec::new();
        for mode in [TopologyMode::Flat, TopologyMode::Hybrid] {
            for dual in [false, true] {
                plans.push(TopologyPlan::new(LabTag::new("s").unwrap(), 3, mode, dual).unwrap());
            }
        }
        plans
    }

    #[test]
    fn every_command_acts_inside_a_lab_namespace() {
        for plan in plans() {
            let prefix = plan.tag.name_prefix();
            for step in script(&plan) {
                let argv = step.command().argv();
                let namespace = match argv.iter().map(String::as_str).collect::<Vec<_>>()[..] {
                    ["ip", "-n", ns, ..]
                    | ["ip", "netns", "exec", ns, ..]
                    | ["ip", "netns", "add", ns] => ns,
                    _ => panic!("command outside a lab namespace: {}", step.command()),
                };
                assert!(namespace.starts_with(&prefix), "{}", step.command());
            }
        }
    }

    #[test]
    fn namespaces_are_created_before_anything_uses_them() {
        for plan in plans() {
            let mut created = Vec::new();
            for step in script(&plan) {
                if let Some(Resource::Namespace { name }) = step.creates() {
                    created.push(name.clone());
                    continue;
                }
                for arg in step.command().argv() {
                    if arg.starts_with(&plan.tag.name_prefix())
                        && plan.namespaces().contains(&arg.as_str())
                    {
                        assert!(
                            created.contains(arg),
                            "{arg} used before creation: {}",
                            step.command()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn every_namespace_link_and_table_is_recorded() {
        for plan in plans() {
            let recorded: Vec<Resource> = script(&plan)
                .iter()
                .filter_map(|s| s.creates().cloned())
                .collect();
            for ns in plan.namespaces() {
                assert!(
                    recorded.contains(&Resource::Namespace { name: ns.into() }),
                    "{ns}"
                );
            }
            for veth in &plan.veths {
                let link = Resource::Link {
                    namespace: veth.first.namespace.clone(),
                    name: veth.first.name.clone(),
                };
                assert!(recorded.contains(&link), "{link}");
            }
            assert_eq!(
                recorded
                    .iter()
                    .filter(|r| matches!(r, Resource::NftTable { .. }))
                    .count(),
                plan.routers().count()
            );
            // Only creating steps create: a configure step never runs
            // `link add`, `netns add` or `nft -f`.
            for step in script(&plan).iter().filter(|s| s.creates().is_none()) {
                let line = step.command().argv().join(" ");
                assert!(
                    !line.contains(" add ")
                        || line.contains(" addr add ")
                        || line.contains(" route add "),
                    "{line}"
                );
                assert!(!line.contains("nft"), "{line}");
            }
        }
    }

    #[test]
    fn the_router_masquerades_its_lan_and_lets_only_replies_in() {
        let plan =
            TopologyPlan::new(LabTag::new("s").unwrap(), 2, TopologyMode::Hybrid, true).unwrap();
        let rules = nat_ruleset(plan.nodes[1].router.as_ref().unwrap());
        assert!(rules.contains("table inet trls_nat"), "{rules}");
        assert!(
            rules.contains("oifname \"trls-r2w\" ip saddr 192.168.102.0/24 counter masquerade"),
            "{rules}"
        );
        assert!(
            rules.contains("ip6 saddr fd00:18:2::/64 counter masquerade"),
            "{rules}"
        );
        assert!(rules.contains("policy drop"), "{rules}");
        assert!(
            rules.contains("iifname \"trls-r2l\" oifname \"trls-r2w\" accept"),
            "{rules}"
        );
    }

    #[test]
    fn ipv6_addresses_skip_dad_and_ipv4_only_labs_touch_no_ipv6_sysctl() {
        for plan in plans() {
            for step in script(&plan) {
                let line = step.command().argv().join(" ");
                if line.contains(" addr add ") && line.contains(':') {
                    assert!(line.ends_with(" nodad"), "{line}");
                }
                if !plan.dual_stack {
                    assert!(!line.contains("ipv6") && !line.contains(" -6 "), "{line}");
                }
            }
        }
    }
}
