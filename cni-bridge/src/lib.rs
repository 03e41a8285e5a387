//! tailroute-bridge: a CNI 1.1 bridge plugin with built-in, crash-safe IPAM.
//!
//! The binary is exec'd by the container runtime for every pod start and
//! stop. [`run`] is the whole program; the modules are its concepts:
//! the protocol ([`env`], [`args`], [`config`], [`version`], [`result`],
//! [`error`]), the address store ([`ipam`], [`attachment`]) and the kernel
//! side ([`netlink`], [`netns`], [`bridge`], [`mac`], [`reaper`]).
//!
//! The node agent reads attachments through [`ipam::store::read_attachments`].

pub mod args;
pub mod attachment;
pub mod bridge;
pub mod commands;
pub mod config;
pub mod env;
pub mod error;
pub mod ipam;
pub mod mac;
pub mod netlink;
pub mod netns;
pub mod reaper;
pub mod result;
pub mod version;

use std::io::Write;

use config::NetConf;
use env::{Command, Invocation};
use error::{CniError, ErrorCode};
use version::CniVersion;

/// Run one invocation: `env` looks up `CNI_*` variables, `stdin` is the
/// config. Writes the result or the error object to `stdout`, a log line for
/// errors to `stderr`, and returns the exit code.
pub fn run(
    env: impl Fn(&str) -> Option<String>,
    stdin: &[u8],
    stdout: &mut impl Write,
    stderr: &mut impl Write,
) -> i32 {
    let answer_version = NetConf::peek_version(stdin).unwrap_or(CniVersion::LATEST);
    match dispatch(env, stdin) {
        Ok(out) => {
            if let Some(out) = out {
                let _ = writeln!(stdout, "{out}");
            }
            0
        }
        Err((err, version)) => {
            let version = version.unwrap_or(answer_version);
            let _ = writeln!(stdout, "{}", err.to_json(version));
            let _ = writeln!(stderr, "tailroute-bridge: {err}");
            1
        }
    }
}

type Failure = (CniError, Option<CniVersion>);

fn dispatch(env: impl Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<Option<String>, Failure> {
    let inv = Invocation::from_lookup(env).map_err(|e| (e, None))?;
    if inv.command == Command::Version {
        return Ok(Some(version::version_report(CniVersion::LATEST)));
    }
    let conf = NetConf::parse(stdin).map_err(|e| (e, None))?;
    let v = conf.cni_version;
    let with_version = |e: CniError| (e, Some(v));
    match inv.command {
        Command::Add => {
            let result = commands::add::add(&inv, &conf).map_err(with_version)?;
            Ok(Some(result.to_json(v).to_string()))
        }
        Command::Del => commands::del::del(&inv, &conf)
            .map(|()| None)
            .map_err(with_version),
        Command::Check => {
            require(v.has_check(), "CHECK", "0.4.0").map_err(with_version)?;
            commands::check::check(&inv, &conf)
                .map(|()| None)
                .map_err(with_version)
        }
        Command::Status => {
            require(v.has_status_and_gc(), "STATUS", "1.1.0").map_err(with_version)?;
            commands::status::status(&conf)
                .map(|()| None)
                .map_err(with_version)
        }
        Command::Gc => {
            require(v.has_status_and_gc(), "GC", "1.1.0").map_err(with_version)?;
            commands::gc::gc(&conf).map(|()| None).map_err(with_version)
        }
        Command::Version => Ok(None),
    }
}

fn require(ok: bool, command: &str, since: &str) -> Result<(), CniError> {
    if ok {
        Ok(())
    } else {
        Err(CniError::new(
            ErrorCode::IncompatibleVersion,
            format!("{command} needs cniVersion {since} or later"),
        )
        .details(format!(
            "set cniVersion to {since} or later in the network config"
        )))
    }
}
