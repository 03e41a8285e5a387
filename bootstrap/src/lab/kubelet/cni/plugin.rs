//! Running a network's plugin chain for one attachment, as libcni does.
//!
//! ADD runs the plugins in order, each given the previous one's result as
//! `prevResult`; the last result is the attachment's. DEL runs them in
//! reverse, each given the cached ADD result (from CNI 0.4.0 on), and stops
//! at the first failure, so a failed DEL is simply retried as a whole.
//! Every plugin gets the same environment, which is what lets a DEL find
//! what an earlier ADD made.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::io::AsyncWriteExt;

use super::config::NetworkConfig;

/// How long one plugin may run before it is killed and the call fails.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The interface name every pod gets, as with containerd.
pub const POD_IFNAME: &str = "eth0";

/// One pod's attachment to the network: what the `CNI_*` variables say.
#[derive(Debug, Clone)]
pub struct Attachment<'a> {
    /// `CNI_CONTAINERID`: the sandbox id.
    pub container_id: &'a str,
    /// `CNI_NETNS`: the pod's network namespace file.
    pub netns: &'a Path,
    /// The pod's namespace (`K8S_POD_NAMESPACE`).
    pub pod_namespace: &'a str,
    /// The pod's name (`K8S_POD_NAME`).
    pub pod_name: &'a str,
    /// The pod's UID (`K8S_POD_UID`).
    pub pod_uid: &'a str,
    /// Runtime values for plugins' declared `capabilities` (`portMappings`).
    pub capability_args: &'a Map<String, Value>,
}

/// A CNI command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach.
    Add,
    /// Detach (idempotent).
    Del,
}

impl Command {
    fn env_value(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Command::Add => "add",
            Command::Del => "delete",
        }
    }
}

/// A plugin call that failed. The message follows containerd's
/// (`plugin type="bridge" name="net" failed (add): msg; details`), so it
/// reads the same in `kubectl describe` as on a real node.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The program is not in the bin dir.
    #[error("plugin type={plugin:?} name={network:?} failed ({verb}): failed to find plugin {plugin:?} in path [{bin_dir}]", bin_dir = bin_dir.display())]
    NotFound {
        /// The plugin's `type`.
        plugin: String,
        /// The network's name.
        network: String,
        /// `add` or `delete`.
        verb: &'static str,
        /// Where it was looked for.
        bin_dir: PathBuf,
    },
    /// The plugin could not be started or talked to.
    #[error("plugin type={plugin:?} name={network:?} failed ({verb}): {source}")]
    Exec {
        /// The plugin's `type`.
        plugin: String,
        /// The network's name.
        network: String,
        /// `add` or `delete`.
        verb: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The plugin ran too long and was killed.
    #[error("plugin type={plugin:?} name={network:?} failed ({verb}): no answer after {}s; killed", PLUGIN_TIMEOUT.as_secs())]
    Timeout {
        /// The plugin's `type`.
        plugin: String,
        /// The network's name.
        network: String,
        /// `add` or `delete`.
        verb: &'static str,
    },
    /// The plugin reported an error (exit status not 0).
    #[error("plugin type={plugin:?} name={network:?} failed ({verb}): {msg}{}", if details.is_empty() { String::new() } else { format!("; {details}") })]
    Failed {
        /// The plugin's `type`.
        plugin: String,
        /// The network's name.
        network: String,
        /// `add` or `delete`.
        verb: &'static str,
        /// The error's `code`, when it printed a CNI error object.
        code: Option<u64>,
        /// The error's `msg` (or its stderr, when it printed no error).
        msg: String,
        /// The error's `details`.
        details: String,
    },
    /// ADD succeeded but printed no valid result.
    #[error("plugin type={plugin:?} name={network:?} failed (add): its result is not a JSON object: {output:?}")]
    BadResult {
        /// The plugin's `type`.
        plugin: String,
        /// The network's name.
        network: String,
        /// What it printed.
        output: String,
    },
}

/// Runs ADD through the whole chain and returns the last plugin's result.
pub async fn add(
    bin_dir: &Path,
    network: &NetworkConfig,
    attachment: &Attachment<'_>,
) -> Result<Value, PluginError> {
    let mut prev: Option<Value> = None;
    for index in 0..network.plugins.len() {
        let stdin = network.plugin_stdin(index, prev.as_ref(), attachment.capability_args);
        let stdout = exec(bin_dir, network, index, Command::Add, attachment, &stdin).await?;
        match serde_json::from_slice::<Value>(&stdout) {
            Ok(result @ Value::Object(_)) => prev = Some(result),
            _ => {
                return Err(PluginError::BadResult {
                    plugin: network.plugin_type(index).to_owned(),
                    network: network.name.clone(),
                    output: String::from_utf8_lossy(&stdout).into_owned(),
                })
            }
        }
    }
    Ok(prev.unwrap_or_else(|| Value::Object(Map::new())))
}

/// Runs DEL through the chain in reverse, giving each plugin the cached ADD
/// result (if any) as libcni does.
///
/// One thing differs from libcni, which stops at the first failure and
/// leaves the retry to the runtime: a plugin that refuses the DEL as
/// malformed ([`PluginError::is_permanent_refusal`]) would refuse every
/// retry too, and the pod could never get a new sandbox. Such a refusal
/// means the plugin acted on nothing, so the DEL goes on with the other
/// plugins and the refusals are returned for the log.
pub async fn del(
    bin_dir: &Path,
    network: &NetworkConfig,
    attachment: &Attachment<'_>,
    cached_add_result: Option<&Value>,
) -> Result<Vec<PluginError>, PluginError> {
    let prev = cached_add_result.filter(|_| network.del_gets_prev_result());
    let mut refusals = Vec::new();
    for index in (0..network.plugins.len()).rev() {
        let stdin = network.plugin_stdin(index, prev, attachment.capability_args);
        match exec(bin_dir, network, index, Command::Del, attachment, &stdin).await {
            Ok(_) => {}
            Err(e) if e.is_permanent_refusal() => refusals.push(e),
            Err(e) => return Err(e),
        }
    }
    Ok(refusals)
}

impl PluginError {
    /// True if the plugin refused the request as malformed (CNI error
    /// codes 1, 2, 4, 6, 7: version, unsupported field, environment,
    /// decoding, invalid config) or found nothing to act on (3): asked
    /// again with the same config and environment, it can only answer the
    /// same. I/O errors (5), "try again" (11) and plugins that fail without
    /// a CNI error are worth retrying.
    pub fn is_permanent_refusal(&self) -> bool {
        matches!(
            self,
            PluginError::Failed {
                code: Some(1..=4 | 6 | 7),
                ..
            }
        )
    }
}

/// `CNI_ARGS` as containerd sets it for a pod.
pub fn cni_args(attachment: &Attachment<'_>) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
        attachment.pod_namespace, attachment.pod_name, attachment.container_id, attachment.pod_uid
    )
}

/// Runs plugin `index` once and returns its stdout.
async fn exec(
    bin_dir: &Path,
    network: &NetworkConfig,
    index: usize,
    command: Command,
    attachment: &Attachment<'_>,
    stdin: &Value,
) -> Result<Vec<u8>, PluginError> {
    let plugin = network.plugin_type(index).to_owned();
    let program = bin_dir.join(&plugin);
    if !program.is_file() {
        return Err(PluginError::NotFound {
            plugin,
            network: network.name.clone(),
            verb: command.verb(),
            bin_dir: bin_dir.to_owned(),
        });
    }
    let exec_error = |source| PluginError::Exec {
        plugin: network.plugin_type(index).to_owned(),
        network: network.name.clone(),
        verb: command.verb(),
        source,
    };
    let mut child = tokio::process::Command::new(&program)
        .env("CNI_COMMAND", command.env_value())
        .env("CNI_CONTAINERID", attachment.container_id)
        .env("CNI_NETNS", attachment.netns)
        .env("CNI_IFNAME", POD_IFNAME)
        .env("CNI_PATH", bin_dir)
        .env("CNI_ARGS", cni_args(attachment))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(exec_error)?;
    if let Some(mut pipe) = child.stdin.take() {
        // A plugin that exits without reading its config is judged by its
        // exit status and output below, which explain it better.
        let _ = pipe.write_all(stdin.to_string().as_bytes()).await;
    }
    let output = match tokio::time::timeout(PLUGIN_TIMEOUT, child.wait_with_output()).await {
        Ok(output) => output.map_err(exec_error)?,
        // Dropping the child (kill_on_drop) kills the plugin.
        Err(_) => {
            return Err(PluginError::Timeout {
                plugin,
                network: network.name.clone(),
                verb: command.verb(),
            })
        }
    };
    if output.status.success() {
        return Ok(output.stdout);
    }
    let (code, msg, details) = match serde_json::from_slice::<Value>(&output.stdout) {
        Ok(Value::Object(err)) if err.contains_key("msg") || err.contains_key("code") => (
            err.get("code").and_then(Value::as_u64),
            err.get("msg")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            err.get("details")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
        ),
        _ => {
            let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
            let msg = if stderr.is_empty() {
                format!("exited with {}", output.status)
            } else {
                stderr
            };
            (None, msg, String::new())
        }
    };
    Err(PluginError::Failed {
        plugin,
        network: network.name.clone(),
        verb: command.verb(),
        code,
        msg,
        details,
    })
}

/// The pod's addresses in an ADD result, IPv4 first.
///
/// Reads the `ips` list of CNI 0.3/0.4 (entries with `"version"`) and 1.x
/// results alike: both carry `address` as a CIDR.
pub fn result_ips(result: &Value) -> Result<Vec<IpAddr>, String> {
    let ips = result
        .get("ips")
        .and_then(Value::as_array)
        .ok_or("the result has no `ips` list")?;
    let mut addrs = Vec::new();
    for entry in ips {
        let cidr = entry
            .get("address")
            .and_then(Value::as_str)
            .ok_or("an `ips` entry has no `address`")?;
        let ip = cidr.split('/').next().unwrap_or(cidr);
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| format!("`ips` holds {cidr:?}, not an address"))?;
        if !addrs.contains(&ip) {
            addrs.push(ip);
        }
    }
    if addrs.is_empty() {
        return Err("the result holds no address".to_owned());
    }
    // Stable: within a family the plugin's order is kept.
    addrs.sort_by_key(|ip| ip.is_ipv6());
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn addresses_are_read_from_both_result_shapes() {
        let v1 = json!({"cniVersion": "1.1.0", "ips": [
            {"address": "fd00:10:244:1::7/64", "interface": 2},
            {"address": "10.244.1.7/24", "gateway": "10.244.1.1", "interface": 2}]});
        assert_eq!(
            result_ips(&v1).unwrap(),
            vec![
                "10.244.1.7".parse::<IpAddr>().unwrap(),
                "fd00:10:244:1::7".parse().unwrap()
            ]
        );
        let v04 = json!({"cniVersion": "0.4.0", "ips": [
            {"version": "4", "address": "10.244.1.8/24"}]});
        assert_eq!(
            result_ips(&v04).unwrap(),
            vec!["10.244.1.8".parse::<IpAddr>().unwrap()]
        );
        assert!(result_ips(&json!({"cniVersion": "1.0.0"})).is_err());
        assert!(result_ips(&json!({"ips": []})).is_err());
        assert!(result_ips(&json!({"ips": [{"address": "nope/24"}]})).is_err());
    }

    #[test]
    fn cni_args_are_containerds() {
        let caps = Map::new();
        let att = Attachment {
            container_id: "abc",
            netns: Path::new("/run/netns/x"),
            pod_namespace: "default",
            pod_name: "web",
            pod_uid: "u-1",
            capability_args: &caps,
        };
        assert_eq!(
            cni_args(&att),
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;\
             K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1"
        );
    }

    /// A bin dir of shell-script plugins that log their calls: `first`
    /// and `second` succeed, `refuser` refuses DEL as invalid config,
    /// `broken` fails without a CNI error.
    fn fake_bin_dir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tailroute-fake-cni-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let script = r#"#!/bin/sh
dir=$(dirname "$0"); name=$(basename "$0"); conf=$(cat)
echo "$name $CNI_COMMAND $CNI_CONTAINERID $CNI_NETNS $CNI_IFNAME $CNI_PATH $CNI_ARGS" >> "$dir/calls"
echo "$conf" >> "$dir/stdin"
case "$name-$CNI_COMMAND" in
  first-ADD) echo '{"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.5/24"}]}' ;;
  second-ADD) echo '{"cniVersion": "1.0.0", "ips": [{"address": "fd00::5/64"}, {"address": "10.0.0.5/24"}]}' ;;
  refuser-DEL) echo '{"cniVersion": "1.0.0", "code": 7, "msg": "bad config"}'; exit 1 ;;
  broken-*) echo "it broke" >&2; exit 2 ;;
esac
"#;
        for name in ["first", "second", "refuser", "broken"] {
            let path = dir.join(name);
            std::fs::write(&path, script).unwrap();
            let executable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
            std::fs::set_permissions(&path, executable).unwrap();
        }
        dir
    }

    fn chain(types: &[&str]) -> NetworkConfig {
        let plugins: Vec<Value> = types.iter().map(|t| json!({"type": t})).collect();
        let text = json!({"cniVersion": "1.0.0", "name": "fake", "plugins": plugins});
        NetworkConfig::parse("f".into(), &text.to_string(), true).unwrap()
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[tokio::test]
    async fn the_chain_runs_as_libcni_runs_it() {
        let bin = fake_bin_dir("chain");
        let caps = Map::new();
        let att = Attachment {
            container_id: "c0ffee",
            netns: Path::new("/run/netns/pod"),
            pod_namespace: "default",
            pod_name: "web",
            pod_uid: "u-1",
            capability_args: &caps,
        };
        let network = chain(&["first", "second"]);
        let result = add(&bin, &network, &att).await.unwrap();
        assert_eq!(
            result_ips(&result).unwrap(),
            vec![
                "10.0.0.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
        let env = format!(
            "c0ffee /run/netns/pod eth0 {} {}",
            bin.display(),
            cni_args(&att)
        );
        assert_eq!(
            lines(&bin.join("calls")),
            [format!("first ADD {env}"), format!("second ADD {env}")]
        );
        let stdin: Vec<Value> = lines(&bin.join("stdin"))
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            stdin[0],
            json!({"type": "first", "name": "fake", "cniVersion": "1.0.0"})
        );
        assert_eq!(
            stdin[1]["prevResult"],
            json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.5/24"}]})
        );

        std::fs::remove_file(bin.join("calls")).unwrap();
        std::fs::remove_file(bin.join("stdin")).unwrap();
        let refusals = del(&bin, &network, &att, Some(&result)).await.unwrap();
        assert!(refusals.is_empty());
        assert_eq!(
            lines(&bin.join("calls")),
            [format!("second DEL {env}"), format!("first DEL {env}")]
        );
        for line in lines(&bin.join("stdin")) {
            let conf: Value = serde_json::from_str(&line).unwrap();
            assert_eq!(conf["prevResult"], result);
        }

        // A refusal is reported and the rest of the chain still runs; a
        // plugin that just fails stops the DEL (it is worth a retry).
        std::fs::remove_file(bin.join("calls")).unwrap();
        let refusals = del(&bin, &chain(&["first", "refuser"]), &att, None)
            .await
            .unwrap();
        assert_eq!(refusals.len(), 1);
        assert!(refusals[0]
            .to_string()
            .ends_with("failed (delete): bad config"));
        assert_eq!(lines(&bin.join("calls")).len(), 2);
        let err = del(&bin, &chain(&["first", "broken"]), &att, None)
            .await
            .unwrap_err();
        assert!(!err.is_permanent_refusal());
        assert!(
            err.to_string().ends_with("failed (delete): it broke"),
            "{err}"
        );
        let err = add(&bin, &chain(&["missing"]), &att).await.unwrap_err();
        assert!(
            err.to_string()
                .contains("failed to find plugin \"missing\""),
            "{err}"
        );
        std::fs::remove_dir_all(&bin).unwrap();
    }

    #[test]
    fn plugin_errors_read_like_containerds() {
        let err = PluginError::Failed {
            plugin: "tailroute-bridge".into(),
            network: "tailroute".into(),
            verb: "add",
            code: Some(100),
            msg: "no free address".into(),
            details: "the podCIDR is full".into(),
        };
        assert_eq!(
            err.to_string(),
            "plugin type=\"tailroute-bridge\" name=\"tailroute\" failed (add): \
             no free address; the podCIDR is full"
        );
    }
}
