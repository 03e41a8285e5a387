//! Root tier: `down` leaves nothing behind, also after an `up` that was
//! stopped half-way, working from the on-disk ledger alone.

mod common;

use common::{assert_nothing_left, host_nft_tables, netns_containing, TestLab};
use tailroute::lab::{
    script, status, up, up_with_fault, LabStatus, Ledger, Resource, TopologyMode, UpError,
};

#[test]
fn down_removes_every_namespace_link_table_and_the_state_dir() {
    let tables_before = host_nft_tables();
    let lab = TestLab::up('f', 2, TopologyMode::Hybrid, true);
    let ledger = Ledger::open(&lab.state_dir)
        .unwrap()
        .expect("ledger exists");
    // Up: every planned namespace exists and is recorded; nothing unrecorded.
    let up_status = status(&lab.prefix(), Some(&ledger)).unwrap();
    assert!(up_status.unrecorded_namespaces.is_empty(), "{up_status:?}");
    assert!(
        up_status
            .recorded
            .iter()
            .all(|(_, exists)| exists == &Ok(true)),
        "{up_status:?}"
    );
    let mut names = netns_containing(&lab.prefix());
    names.sort();
    let mut planned: Vec<String> = lab
        .plan
        .namespaces()
        .iter()
        .map(|s| s.to_string())
        .collect();
    planned.sort();
    assert_eq!(names, planned);

    lab.down();
    assert_nothing_left(&lab, &tables_before);
    assert!(Ledger::open(&lab.state_dir).unwrap().is_none());
    let after: LabStatus = status(&lab.prefix(), None).unwrap();
    assert!(after.is_gone(), "{after:?}");
}

#[test]
fn down_after_an_up_stopped_half_way_leaves_nothing() {
    let tables_before = host_nft_tables();
    let lab = TestLab::planned('g', 2, TopologyMode::Hybrid, true);
    // Stop points: right after each ledger record (the thing is recorded
    // but not created: the hardest case), right after each creation, and
    // a few in between; the last one is a complete `up`.
    let mut stops = vec![0];
    let mut actions = 0;
    for step in script(&lab.plan) {
        if step.creates().is_some() {
            actions += 1;
            stops.push(actions);
            stops.push(actions + 1);
        }
        actions += 1;
        if actions % 9 == 0 {
            stops.push(actions);
        }
    }
    stops.push(actions);
    stops.sort_unstable();
    stops.dedup();
    assert!(stops.len() > 20, "{stops:?}");
    eprintln!(
        "{} stop points of {actions} actions: {stops:?}",
        stops.len()
    );

    for &stop_after in &stops {
        let mut ledger = Ledger::create(&lab.state_dir).unwrap();
        match up_with_fault(&lab.plan, &mut ledger, stop_after) {
            Err(UpError::InjectedFault { actions }) => assert_eq!(actions, stop_after),
            Ok(()) => assert_eq!(stop_after, actions, "complete up only at the last stop"),
            Err(e) => panic!("stop after {stop_after}: {e}"),
        }
        drop(ledger);
        // As after a kill: only what is on disk is known.
        let on_disk = Ledger::open(&lab.state_dir)
            .unwrap()
            .expect("ledger on disk");
        let half = status(&lab.prefix(), Some(&on_disk)).unwrap();
        assert!(
            half.unrecorded_namespaces.is_empty(),
            "stop after {stop_after}: namespaces exist that the ledger does not list: {half:?}"
        );
        tailroute::lab::down(on_disk)
            .unwrap_or_else(|e| panic!("down after stop at {stop_after}: {e}"));
        assert_nothing_left(&lab, &tables_before);
    }
}

#[test]
fn up_refuses_a_name_it_does_not_own_and_down_leaves_it_alone() {
    let lab = TestLab::planned('h', 1, TopologyMode::Flat, false);
    // Stands in for a namespace someone else made with one of the lab's
    // names; deleted by its guard, also when an assertion fails.
    let guard = ForeignNamespace::create(lab.plan.namespaces()[1]);
    let foreign = guard.0.clone();
    let mut ledger = Ledger::create(&lab.state_dir).unwrap();
    let err = up(&lab.plan, &mut ledger).unwrap_err();
    let refused = matches!(&err, UpError::NameTaken { namespace, .. } if namespace == &foreign);
    let recorded_foreign = ledger
        .resources()
        .iter()
        .any(|r| matches!(r, Resource::Namespace { name } if name == &foreign));
    drop(ledger);
    lab.down();
    let still_there = netns_containing(&foreign) == [foreign.clone()];
    assert!(refused, "{err}");
    assert!(err.to_string().contains("pick another tag"), "{err}");
    assert!(
        !recorded_foreign,
        "the foreign namespace must not be recorded"
    );
    assert!(
        still_there,
        "down removed a namespace the lab did not create"
    );
    assert!(!lab.state_dir.exists());
}

/// A namespace made outside the lab (standing in for someone else's),
/// deleted on drop, also when the test fails.
struct ForeignNamespace(String);

impl ForeignNamespace {
    fn create(name: &str) -> ForeignNamespace {
        let made = std::process::Command::new("ip")
            .args(["netns", "add", name])
            .status()
            .expect("run ip");
        assert!(made.success(), "ip netns add {name}");
        ForeignNamespace(name.to_owned())
    }
}

impl Drop for ForeignNamespace {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.0])
            .status();
    }
}
