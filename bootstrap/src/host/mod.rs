//! Bringing real machines into a cluster: `tailroute init` (the first
//! control plane), `tailroute join` (every other machine) and `tailroute
//! reset` (undo both).
//!
//! Each command is planned before anything changes: the preflight checks
//! ([`preflight`]), the tailnet step ([`tailnet_step`]), then the steps
//! that need the machine's tailnet addresses ([`plan::Plan`]).
//! `--dry-run` prints exactly that plan; a real run carries it out.

pub mod init;
pub mod join;
pub mod kubeadm;
pub mod machine;
pub mod network;
pub mod paths;
pub mod plan;
pub mod preflight;
pub mod reset;
pub mod tailnet_step;

use std::path::Path;

pub use machine::{Machine, RealMachine};

use crate::host::plan::{Action, Plan};
use crate::host::preflight::Preflight;
use crate::host::tailnet_step::TailnetPlan;
use crate::tailnet::{TailnetIdentity, TailscaleCli};

/// A command ready to print or run.
pub struct Prepared<F>
where
    F: Fn(Option<&TailnetIdentity>) -> Result<Plan, String>,
{
    /// `init`, `join`.
    pub command: &'static str,
    /// The checks.
    pub preflight: Preflight,
    /// The tailnet step.
    pub tailnet: TailnetPlan,
    /// The steps after it, given the machine's tailnet identity (`None`
    /// in a dry run on a machine not yet on the tailnet).
    pub then: F,
}

impl<F> Prepared<F>
where
    F: Fn(Option<&TailnetIdentity>) -> Result<Plan, String>,
{
    /// The dry run's text: the checks and every step.
    pub fn render(&self) -> Result<String, String> {
        let mut out = format!(
            "tailroute {} --dry-run: nothing is changed.\n\npreflight:\n{}\nplan:\n",
            self.command, self.preflight
        );
        out.push_str(&format!("  1. {}\n", self.tailnet.describe()));
        out.push_str(&(self.then)(self.tailnet.identity())?.render(2));
        Ok(out)
    }

    /// Prints the dry run; an error when the real run would stop at the
    /// checks.
    pub fn dry_run(&self) -> Result<(), String> {
        print!("{}", self.render()?);
        self.stop_on_problems()
    }

    /// Runs: the checks, the tailnet step, then the rest.
    pub fn run(&self, cli: &TailscaleCli) -> Result<(), String> {
        println!("preflight:\n{}", self.preflight);
        self.stop_on_problems()?;
        println!("[1] {}", self.tailnet.describe());
        let joined = self.tailnet.execute(cli)?;
        let plan = (self.then)(Some(joined.identity()))?;
        plan.execute(2)
    }

    fn stop_on_problems(&self) -> Result<(), String> {
        let problems = self.preflight.problems().count();
        if problems == 0 {
            Ok(())
        } else {
            Err(format!(
                "preflight found {problems} problem(s), listed above with their fixes; nothing \
                 was changed"
            ))
        }
    }
}

/// A step writing `contents` to `path`, or nothing when the file already
/// holds exactly that.
pub fn write_step(
    machine: &dyn Machine,
    path: &str,
    contents: String,
    mode: u32,
    shown: String,
) -> (String, Action) {
    if machine.read(Path::new(path)).as_deref() == Some(contents.as_str()) {
        return (format!("{path}: unchanged"), Action::Nothing);
    }
    (
        format!("write {path}"),
        Action::WriteFile {
            path: path.into(),
            contents,
            mode,
            shown,
        },
    )
}

/// The step installing the CNI plugin, or nothing when the installed one
/// is the same file.
pub fn plugin_step(machine: &dyn Machine) -> (String, Action) {
    let to = Path::new(paths::CNI_BIN_DIR).join(paths::PLUGIN);
    let Some(from) = machine.bundled_plugin() else {
        return (
            format!("{}: already installed", to.display()),
            Action::Nothing,
        );
    };
    // One read of each file; an unreadable bundled plugin is "install" (the
    // install step then names the read error).
    match machine.bytes(&from) {
        Some(bundled) if machine.bytes(&to).as_ref() == Some(&bundled) => (
            format!("{}: already installed", to.display()),
            Action::Nothing,
        ),
        _ => (
            format!("install {} as {}", from.display(), to.display()),
            Action::Install { from, to },
        ),
    }
}

/// A step that can only be decided once the tailnet step has run (dry
/// runs on a machine not yet on the tailnet).
pub fn deferred(summary: String) -> (String, Action) {
    (
        format!("{summary} (with the addresses `tailscale up` assigns)"),
        Action::Deferred,
    )
}
