//! Command-line parsing (a tiny hand parser: no clap for five flags).

use std::path::PathBuf;

/// Which plugins to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Only {
    /// Both, side by side (the default).
    Both,
    /// Only Debian's reference bridge + host-local.
    Reference,
    /// Only tailroute-bridge.
    Tailroute,
}

/// Benchmark parameters.
#[derive(Debug, Clone)]
pub struct Args {
    /// The tailroute-bridge binary.
    pub plugin: PathBuf,
    /// Directory holding the reference `bridge` and `host-local`.
    pub reference_dir: PathBuf,
    /// Attachments per phase.
    pub n: usize,
    /// Worker threads in the concurrent phases.
    pub concurrency: usize,
    /// Which side(s) to run.
    pub only: Only,
}

/// Below this the percentiles (p99 = 2nd worst of 200) mean little.
pub const MIN_N: usize = 200;

/// The usage text.
pub const USAGE: &str = "\
usage: cni-bench [--plugin PATH] [--reference-dir DIR] [-n N] [--concurrency C]
                 [--only reference|tailroute] [--quick]

  --plugin PATH        tailroute-bridge binary [target/release/tailroute-bridge]
  --reference-dir DIR  reference CNI plugins (bridge, host-local) [/usr/lib/cni]
  -n N                 attachments per phase, >= 200 unless --quick [200]
  --concurrency C, -c  worker threads for the concurrent phases [8]
  --only SIDE          run only `reference` or only `tailroute`
  --quick              allow N < 200 (smoke tests; figures not meaningful)

Needs root: everything runs in throwaway network namespaces.";

/// Parses `argv` (without the program name). `Err` carries a message to
/// print; `Ok(None)` means help was requested.
pub fn parse(argv: impl IntoIterator<Item = String>) -> Result<Option<Args>, String> {
    let mut args = Args {
        plugin: PathBuf::from("target/release/tailroute-bridge"),
        reference_dir: PathBuf::from("/usr/lib/cni"),
        n: MIN_N,
        concurrency: 8,
        only: Only::Both,
    };
    let mut quick = false;
    let mut it = argv.into_iter();
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--plugin" => args.plugin = value("--plugin")?.into(),
            "--reference-dir" => args.reference_dir = value("--reference-dir")?.into(),
            "-n" => args.n = number("-n", &value("-n")?)?,
            "-c" | "--concurrency" => args.concurrency = number(&flag, &value(&flag)?)?,
            "--only" => {
                args.only = match value("--only")?.as_str() {
                    "reference" => Only::Reference,
                    "tailroute" => Only::Tailroute,
                    other => {
                        return Err(format!(
                            "--only: expected reference|tailroute, got {other:?}"
                        ))
                    }
                }
            }
            "--quick" => quick = true,
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if args.n < MIN_N && !quick {
        return Err(format!(
            "-n {} is below {MIN_N}; pass --quick for a smoke test",
            args.n
        ));
    }
    if args.n == 0 || args.concurrency == 0 {
        return Err("-n and --concurrency must be at least 1".into());
    }
    // 10.99.0.0/16 minus network, gateway and broadcast.
    if args.n > 65_000 {
        return Err("-n must fit into 10.99.0.0/16 (at most 65000)".into());
    }
    Ok(Some(args))
}

fn number(flag: &str, v: &str) -> Result<usize, String> {
    v.parse()
        .map_err(|_| format!("{flag}: not a number: {v:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(a: &[&str]) -> Result<Option<Args>, String> {
        parse(a.iter().map(|s| s.to_string()))
    }

    #[test]
    fn defaults() {
        let a = p(&[]).expect("ok").expect("args");
        assert_eq!((a.n, a.concurrency, a.only), (200, 8, Only::Both));
    }

    #[test]
    fn small_n_needs_quick() {
        assert!(p(&["-n", "10"]).is_err());
        let a = p(&["-n", "10", "--quick", "--only", "reference", "-c", "2"])
            .expect("ok")
            .expect("args");
        assert_eq!((a.n, a.concurrency, a.only), (10, 2, Only::Reference));
    }

    #[test]
    fn errors() {
        assert!(p(&["-n"]).is_err());
        assert!(p(&["--only", "x"]).is_err());
        assert!(p(&["--bogus"]).is_err());
        assert!(p(&["-c", "0"]).is_err());
        assert!(p(&["--help"]).expect("ok").is_none());
    }
}
