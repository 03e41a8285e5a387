//! The node's network configuration, found in the CNI conf dir the way
//! containerd finds it (through go-cni and libcni).
//!
//! Files ending in `.conf`, `.conflist` or `.json` are candidates, and the
//! lexicographically first one is the network: `10-tailroute.conflist`
//! beats `99-loopback.conf`. A `.conflist` is a plugin chain; a `.conf` or
//! `.json` file is a single plugin's config, run as a chain of one. An
//! invalid first file is an error: it is not skipped in favour of the next
//! one, so a typo shows up as such instead of as a different network.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The extensions libcni looks for in a conf dir.
const EXTENSIONS: [&str; 3] = ["conf", "conflist", "json"];

/// A plugin chain read from the conf dir: what ADD runs in order and DEL
/// runs in reverse.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkConfig {
    /// The file it was read from.
    pub file: PathBuf,
    /// The network's `name`, given to every plugin.
    pub name: String,
    /// The network's `cniVersion`, given to every plugin.
    pub cni_version: String,
    /// Each plugin's own config object, in chain order.
    pub plugins: Vec<Map<String, Value>>,
}

/// Why there is no usable network config: the node's network is not ready.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkNotReady {
    /// The conf dir holds no candidate file (or does not exist yet).
    #[error("cni config uninitialized: no network config in {}", dir.display())]
    NoConfig {
        /// The conf dir.
        dir: PathBuf,
    },
    /// The conf dir could not be listed.
    #[error("cni config uninitialized: cannot read {}: {reason}", dir.display())]
    Unreadable {
        /// The conf dir.
        dir: PathBuf,
        /// The I/O error.
        reason: String,
    },
    /// The first candidate file is not a valid config.
    #[error("cni config {} is invalid: {reason}", file.display())]
    Invalid {
        /// The file.
        file: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

impl NetworkConfig {
    /// The network config of `dir`: its lexicographically first candidate
    /// file, parsed.
    pub fn load(dir: &Path) -> Result<NetworkConfig, NetworkNotReady> {
        let file = first_candidate(dir)?;
        let invalid = |reason: String| NetworkNotReady::Invalid {
            file: file.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&file).map_err(|e| invalid(e.to_string()))?;
        let is_list = file.extension().is_some_and(|e| e == "conflist");
        NetworkConfig::parse(file.clone(), &text, is_list).map_err(invalid)
    }

    /// Parses a config file's text: a chain if `is_list`, otherwise one
    /// plugin's config.
    pub fn parse(file: PathBuf, text: &str, is_list: bool) -> Result<NetworkConfig, String> {
        let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let Value::Object(top) = value else {
            return Err("not a JSON object".to_owned());
        };
        let string_field = |key: &str| match top.get(key) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(_) => Err(format!("`{key}` must be a non-empty string")),
            None => Err(format!("`{key}` is missing")),
        };
        let name = string_field("name")?;
        let cni_version = string_field("cniVersion")?;
        let plugins = if is_list {
            let Some(Value::Array(list)) = top.get("plugins") else {
                return Err("`plugins` must be a list of plugin configs".to_owned());
            };
            if list.is_empty() {
                return Err("`plugins` is empty: the chain has no plugin".to_owned());
            }
            list.iter()
                .enumerate()
                .map(|(i, p)| match p {
                    Value::Object(obj) => Ok(obj.clone()),
                    _ => Err(format!("plugins[{i}] is not a JSON object")),
                })
                .collect::<Result<Vec<_>, _>>()?
        } else {
            vec![top.clone()]
        };
        for (i, plugin) in plugins.iter().enumerate() {
            match plugin.get("type") {
                Some(Value::String(t)) if is_plain_file_name(t) => {}
                Some(Value::String(t)) => {
                    return Err(format!("plugin {i} has type {t:?}, not a program name"))
                }
                _ => return Err(format!("plugin {i} has no `type`")),
            }
        }
        Ok(NetworkConfig {
            file,
            name,
            cni_version,
            plugins,
        })
    }

    /// The program name (`type`) of plugin `index`.
    pub fn plugin_type(&self, index: usize) -> &str {
        self.plugins
            .get(index)
            .and_then(|p| p.get("type"))
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    /// What plugin `index` reads on stdin, built as libcni builds it: its
    /// own object with the network's `name` and `cniVersion`, the previous
    /// result as `prevResult` (none for ADD's first plugin), and a
    /// `runtimeConfig` holding those of `capability_args` the plugin
    /// declares in its `capabilities`.
    pub fn plugin_stdin(
        &self,
        index: usize,
        prev_result: Option<&Value>,
        capability_args: &Map<String, Value>,
    ) -> Value {
        let mut conf = self.plugins.get(index).cloned().unwrap_or_default();
        conf.insert("name".to_owned(), Value::String(self.name.clone()));
        conf.insert(
            "cniVersion".to_owned(),
            Value::String(self.cni_version.clone()),
        );
        if let Some(prev) = prev_result {
            conf.insert("prevResult".to_owned(), prev.clone());
        }
        let runtime_config: Map<String, Value> = conf
            .get("capabilities")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter(|(_, enabled)| enabled.as_bool() == Some(true))
            .filter_map(|(cap, _)| Some((cap.clone(), capability_args.get(cap)?.clone())))
            .collect();
        if !runtime_config.is_empty() {
            conf.insert("runtimeConfig".to_owned(), Value::Object(runtime_config));
        }
        Value::Object(conf)
    }

    /// True if DEL gets the cached ADD result as `prevResult`: libcni does
    /// that from CNI 0.4.0 on.
    pub fn del_gets_prev_result(&self) -> bool {
        version_at_least(&self.cni_version, (0, 4, 0))
    }
}

impl fmt::Display for NetworkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "network {:?} from {}", self.name, self.file.display())
    }
}

/// The lexicographically first `.conf`/`.conflist`/`.json` file in `dir`.
fn first_candidate(dir: &Path) -> Result<PathBuf, NetworkNotReady> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(NetworkNotReady::NoConfig {
                dir: dir.to_owned(),
            })
        }
        Err(e) => {
            return Err(NetworkNotReady::Unreadable {
                dir: dir.to_owned(),
                reason: e.to_string(),
            })
        }
    };
    let mut candidates: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| !t.is_dir()))
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| EXTENSIONS.contains(&e))
        })
        .collect();
    candidates.sort();
    candidates
        .into_iter()
        .next()
        .ok_or_else(|| NetworkNotReady::NoConfig {
            dir: dir.to_owned(),
        })
}

/// A `type` names a program in the bin dir, never a path.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/')
}

/// `version >= min` for CNI versions `x.y.z`; unparsable versions are
/// treated as current (libcni refuses them elsewhere anyway).
fn version_at_least(version: &str, min: (u64, u64, u64)) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u64>());
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Ok(a)), Some(Ok(b)), Some(Ok(c))) => (a, b, c) >= min,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn temp_dir(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("tailroute-cni-config-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    const LIST: &str = r#"{"cniVersion": "1.1.0", "name": "net", "plugins": [
        {"type": "tailroute-bridge", "capabilities": {"ips": true}},
        {"type": "portmap", "capabilities": {"portMappings": true}}]}"#;

    #[test]
    fn the_lexicographically_first_candidate_wins() {
        let dir = temp_dir("first");
        assert_eq!(
            NetworkConfig::load(&dir).unwrap_err().to_string(),
            format!(
                "cni config uninitialized: no network config in {}",
                dir.display()
            )
        );
        std::fs::write(dir.join("README"), "not a config").unwrap();
        std::fs::write(dir.join("10-net.conflist.tmp"), "partial").unwrap();
        assert!(matches!(
            NetworkConfig::load(&dir),
            Err(NetworkNotReady::NoConfig { .. })
        ));
        std::fs::write(
            dir.join("99-single.conf"),
            r#"{"cniVersion": "0.4.0", "name": "single", "type": "bridge"}"#,
        )
        .unwrap();
        let single = NetworkConfig::load(&dir).unwrap();
        assert_eq!(single.name, "single");
        assert_eq!(single.plugin_type(0), "bridge");
        assert_eq!(single.plugins.len(), 1);
        std::fs::write(dir.join("10-net.conflist"), LIST).unwrap();
        let list = NetworkConfig::load(&dir).unwrap();
        assert_eq!(list.file, dir.join("10-net.conflist"));
        assert_eq!(list.plugins.len(), 2);
        assert_eq!(list.plugin_type(1), "portmap");
        std::fs::write(dir.join("00-broken.json"), "{").unwrap();
        let err = NetworkConfig::load(&dir).unwrap_err().to_string();
        assert!(err.contains("00-broken.json is invalid: not JSON"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn invalid_configs_say_what_is_wrong() {
        let parse = |text: &str, list: bool| NetworkConfig::parse("f".into(), text, list);
        assert!(parse(r#"{"name": "n", "plugins": []}"#, true)
            .unwrap_err()
            .contains("`cniVersion` is missing"));
        assert!(parse(
            r#"{"name": "n", "cniVersion": "1.0.0", "plugins": []}"#,
            true
        )
        .unwrap_err()
        .contains("empty"));
        assert!(parse(
            r#"{"name": "n", "cniVersion": "1.0.0", "plugins": [{"type": "../x"}]}"#,
            true
        )
        .unwrap_err()
        .contains("not a program name"));
        assert!(parse(r#"{"name": "n", "cniVersion": "1.0.0"}"#, false)
            .unwrap_err()
            .contains("no `type`"));
    }

    #[test]
    fn plugin_stdin_is_built_as_libcni_builds_it() {
        let net = NetworkConfig::parse("f".into(), LIST, true).unwrap();
        let mut caps = Map::new();
        caps.insert("portMappings".to_owned(), json!([]));
        caps.insert("bandwidth".to_owned(), json!({}));
        assert_eq!(
            net.plugin_stdin(0, None, &caps),
            json!({"type": "tailroute-bridge", "capabilities": {"ips": true},
                   "name": "net", "cniVersion": "1.1.0"})
        );
        let prev = json!({"cniVersion": "1.1.0", "ips": []});
        assert_eq!(
            net.plugin_stdin(1, Some(&prev), &caps),
            json!({"type": "portmap", "capabilities": {"portMappings": true},
                   "name": "net", "cniVersion": "1.1.0", "prevResult": prev,
                   "runtimeConfig": {"portMappings": []}})
        );
    }

    #[test]
    fn del_gets_the_cached_result_from_0_4_0() {
        let with = |v: &str| NetworkConfig {
            file: "f".into(),
            name: "n".into(),
            cni_version: v.into(),
            plugins: Vec::new(),
        };
        assert!(!with("0.3.1").del_gets_prev_result());
        assert!(with("0.4.0").del_gets_prev_result());
        assert!(with("1.1.0").del_gets_prev_result());
    }
}
