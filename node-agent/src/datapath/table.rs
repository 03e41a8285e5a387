//! Installing and removing the `inet tailroute` table with `nft`.

use std::io;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::ruleset::{self, TABLE};
use super::{DatapathError, DatapathSpec, NetnsTarget};

/// Why [`DatapathTable::apply`] did what it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyReason {
    /// Nothing was run: the installed table is the one this value applied
    /// last, for the same spec.
    Unchanged,
    /// The table was absent and has been created.
    Created,
    /// The table was replaced and its content differs from before (a new
    /// spec, or someone edited the table by hand).
    Updated,
    /// The table was replaced with identical content (the first apply of
    /// a process re-asserts what an earlier agent installed).
    Reasserted,
}

impl ApplyReason {
    /// A short, stable name: a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyReason::Unchanged => "unchanged",
            ApplyReason::Created => "created",
            ApplyReason::Updated => "updated",
            ApplyReason::Reasserted => "reasserted",
        }
    }
}

/// What [`DatapathTable::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplyOutcome {
    /// True if the rules in the kernel are different now.
    pub changed: bool,
    /// Why.
    pub reason: ApplyReason,
}

/// The agent's nftables table, `table inet tailroute`, in one network
/// namespace. Keep one value for the agent's lifetime: it remembers what it
/// installed, so that applying an unchanged spec runs nothing but a listing.
#[derive(Debug, Clone)]
pub struct DatapathTable {
    program: PathBuf,
    netns: NetnsTarget,
    timeout: Duration,
    /// The listing right after this value's last apply, and the spec hash.
    last: Option<(String, String)>,
}

impl DatapathTable {
    /// How long one `nft` run may take: a few milliseconds normally; the
    /// kernel serialises nftables transactions, so a busy host may queue.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

    /// The table in `netns`, managed with `nft` from `PATH`.
    pub fn new(netns: NetnsTarget) -> DatapathTable {
        DatapathTable {
            program: PathBuf::from("nft"),
            netns,
            timeout: DatapathTable::DEFAULT_TIMEOUT,
            last: None,
        }
    }

    /// The same table managed with another `nft` binary.
    pub fn with_program(mut self, program: impl Into<PathBuf>) -> DatapathTable {
        self.program = program.into();
        self
    }

    /// The same table with another per-run timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> DatapathTable {
        self.timeout = timeout;
        self
    }

    /// Makes the table match `spec` in one atomic transaction, unless it
    /// already does. Applying the same spec again changes nothing and
    /// reports `changed == false`.
    pub async fn apply(&mut self, spec: &DatapathSpec) -> Result<ApplyOutcome, DatapathError> {
        let table = ruleset::render_table(spec)?;
        let hash = ruleset::spec_hash(&table).unwrap_or_default().to_owned();
        let before = self.listing().await?;
        if let (Some(now), Some((listed, applied))) = (&before, &self.last) {
            if now == listed && *applied == hash {
                return Ok(ApplyOutcome {
                    changed: false,
                    reason: ApplyReason::Unchanged,
                });
            }
        }
        self.run(
            &format!("apply table {TABLE}"),
            &["-f", "-"],
            Some(ruleset::transaction(&table)),
        )
        .await?;
        let after = self.listing().await?.unwrap_or_default();
        let reason = match &before {
            None => ApplyReason::Created,
            Some(b) if *b != after => ApplyReason::Updated,
            Some(_) => ApplyReason::Reasserted,
        };
        self.last = Some((after, hash));
        Ok(ApplyOutcome {
            changed: matches!(reason, ApplyReason::Created | ApplyReason::Updated),
            reason,
        })
    }

    /// Deletes the table; absent is fine. Returns true if it was there.
    pub async fn remove(&mut self) -> Result<bool, DatapathError> {
        self.last = None;
        let existed = self.listing().await?.is_some();
        // The add-then-delete transaction cannot fail on a missing table,
        // so a concurrent removal between the listing and here is harmless.
        self.run(
            &format!("delete table {TABLE}"),
            &["-f", "-"],
            Some(ruleset::removal()),
        )
        .await?;
        Ok(existed)
    }

    /// The installed table as `nft list table inet tailroute` prints it,
    /// or `None` if there is none.
    pub async fn listing(&self) -> Result<Option<String>, DatapathError> {
        let action = format!("list table {TABLE}");
        let mut args = vec!["list", "table"];
        args.extend(TABLE.split(' '));
        match self.run(&action, &args, None).await {
            Ok(out) => Ok(Some(out)),
            Err(DatapathError::NftFailed { stderr, .. })
                if stderr.contains("No such file or directory") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Runs `nft <args>` in the namespace, feeding `input` on stdin, and
    /// returns its stdout.
    async fn run(
        &self,
        action: &str,
        args: &[&str],
        input: Option<String>,
    ) -> Result<String, DatapathError> {
        let mut cmd = Command::new(&self.program);
        cmd.args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        self.netns.prepare(&mut cmd)?;
        let mut cmd = tokio::process::Command::from(cmd);
        // A timed-out run is dropped mid-way; it must not linger.
        cmd.kill_on_drop(true);
        let spawn_error = |source: io::Error| DatapathError::NftSpawn {
            action: action.to_owned(),
            source,
        };
        let mut child = cmd.spawn().map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                DatapathError::NftMissing {
                    program: self.program.clone(),
                }
            } else {
                spawn_error(source)
            }
        })?;
        let exchange = async {
            if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
                stdin.write_all(text.as_bytes()).await?;
                // Dropping closes the pipe: nft reads to end-of-file.
                drop(stdin);
            }
            child.wait_with_output().await
        };
        let output = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| DatapathError::NftTimeout {
                action: action.to_owned(),
                timeout: self.timeout,
            })?
            .map_err(spawn_error)?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(DatapathError::nft_failed(
                action,
                output.status.to_string(),
                &output.stderr,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_nft_says_to_install_nftables() {
        let table = DatapathTable::new(NetnsTarget::Current)
            .with_program("/nonexistent/tailroute-test/nft");
        let e = table.listing().await.expect_err("no such program");
        assert_eq!(e.kind(), "nft_missing");
        assert!(
            e.to_string().contains("install the nftables package"),
            "{e}"
        );
    }
}
