//! Description of one CNI plugin invocation (environment + stdin).

use std::time::Duration;

use serde_json::Value;

/// Where Debian's reference plugins live; the default `CNI_PATH`.
pub const DEFAULT_CNI_PATH: &str = "/usr/lib/cni";

/// Default limit for one invocation: generous for a loaded 2-core CI box,
/// yet a hung plugin fails the test instead of hanging the whole run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// What the plugin reads on stdin.
#[derive(Debug, Clone, PartialEq)]
pub enum Stdin {
    /// A network configuration, serialised compactly.
    Json(Value),
    /// Bytes sent verbatim: lets tests send malformed JSON or nothing at all.
    Raw(String),
}

impl Stdin {
    /// The bytes written to the plugin's stdin.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Stdin::Json(v) => v.to_string().into_bytes(),
            Stdin::Raw(s) => s.clone().into_bytes(),
        }
    }
}

/// One CNI invocation: the `CNI_*` environment and the stdin config.
///
/// Every `CNI_*` variable is optional because the spec leaves some unset
/// for some commands (VERSION, STATUS and GC get no container id, netns or
/// ifname) and tests must be able to check a plugin's handling of missing
/// ones. `None` means "not in the environment at all"; `Some("")` sets the
/// variable to the empty string.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginCall {
    /// `CNI_COMMAND`: ADD, DEL, CHECK, STATUS, GC, VERSION (any string, so
    /// unknown commands can be tested).
    pub command: String,
    /// `CNI_CONTAINERID`.
    pub container_id: Option<String>,
    /// `CNI_NETNS`: path of the pod's network namespace.
    pub netns: Option<String>,
    /// `CNI_IFNAME`: interface name inside the pod, usually `eth0`.
    pub ifname: Option<String>,
    /// `CNI_ARGS`: `K=V;K=V` extra arguments.
    pub args: Option<String>,
    /// `CNI_PATH`: where the plugin looks for delegated plugins (IPAM).
    pub cni_path: Option<String>,
    /// The plugin's stdin.
    pub stdin: Stdin,
    /// Extra environment variables, set after (so they can override) the
    /// `CNI_*` ones.
    pub env: Vec<(String, String)>,
    /// If the plugin keeps its output pipes open longer than this it is
    /// killed and the invocation fails with `ErrorKind::TimedOut`.
    pub timeout: Duration,
}

impl PluginCall {
    /// A call with only `CNI_COMMAND` and `CNI_PATH` set (the shape of
    /// VERSION, STATUS and GC) and `config` on stdin.
    pub fn new(command: &str, config: Value) -> PluginCall {
        PluginCall {
            command: command.to_owned(),
            container_id: None,
            netns: None,
            ifname: None,
            args: None,
            cni_path: Some(DEFAULT_CNI_PATH.to_owned()),
            stdin: Stdin::Json(config),
            env: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// A per-attachment call (ADD, DEL, CHECK) with container id, netns path
    /// and interface name set.
    pub fn attachment(
        command: &str,
        container_id: &str,
        netns: &str,
        ifname: &str,
        config: Value,
    ) -> PluginCall {
        PluginCall::new(command, config)
            .container_id(container_id)
            .netns(netns)
            .ifname(ifname)
    }

    /// `ADD` for one attachment; see [`PluginCall::attachment`].
    pub fn add(container_id: &str, netns: &str, ifname: &str, config: Value) -> PluginCall {
        PluginCall::attachment("ADD", container_id, netns, ifname, config)
    }

    /// `DEL` for one attachment; see [`PluginCall::attachment`].
    pub fn del(container_id: &str, netns: &str, ifname: &str, config: Value) -> PluginCall {
        PluginCall::attachment("DEL", container_id, netns, ifname, config)
    }

    /// `CHECK` for one attachment; see [`PluginCall::attachment`].
    pub fn check(container_id: &str, netns: &str, ifname: &str, config: Value) -> PluginCall {
        PluginCall::attachment("CHECK", container_id, netns, ifname, config)
    }

    /// Sets `CNI_CONTAINERID`.
    pub fn container_id(mut self, id: &str) -> PluginCall {
        self.container_id = Some(id.to_owned());
        self
    }

    /// Sets `CNI_NETNS` (`""` is allowed: an empty but present variable).
    pub fn netns(mut self, path: &str) -> PluginCall {
        self.netns = Some(path.to_owned());
        self
    }

    /// Sets `CNI_IFNAME`.
    pub fn ifname(mut self, ifname: &str) -> PluginCall {
        self.ifname = Some(ifname.to_owned());
        self
    }

    /// Sets `CNI_ARGS`.
    pub fn args(mut self, args: &str) -> PluginCall {
        self.args = Some(args.to_owned());
        self
    }

    /// Sets `CNI_PATH` (default [`DEFAULT_CNI_PATH`]).
    pub fn cni_path(mut self, path: &str) -> PluginCall {
        self.cni_path = Some(path.to_owned());
        self
    }

    /// Replaces stdin with `raw`, sent verbatim (e.g. malformed JSON).
    pub fn raw_stdin(mut self, raw: &str) -> PluginCall {
        self.stdin = Stdin::Raw(raw.to_owned());
        self
    }

    /// Adds an extra environment variable.
    pub fn env(mut self, key: &str, value: &str) -> PluginCall {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Sets the timeout (default [`DEFAULT_TIMEOUT`]).
    pub fn timeout(mut self, timeout: Duration) -> PluginCall {
        self.timeout = timeout;
        self
    }

    /// The full environment of the plugin process, in order: the set `CNI_*`
    /// variables, `PATH`, then the extra ones.
    ///
    /// `PATH` is inherited (or a standard default) because plugins may run
    /// helpers such as `iptables`; nothing else leaks in from the caller.
    pub fn environment(&self) -> Vec<(String, String)> {
        let cni = [
            ("CNI_COMMAND", Some(&self.command)),
            ("CNI_CONTAINERID", self.container_id.as_ref()),
            ("CNI_NETNS", self.netns.as_ref()),
            ("CNI_IFNAME", self.ifname.as_ref()),
            ("CNI_ARGS", self.args.as_ref()),
            ("CNI_PATH", self.cni_path.as_ref()),
        ];
        let path = std::env::var("PATH").unwrap_or_else(|_| {
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
        });
        cni.into_iter()
            .filter_map(|(k, v)| Some((k.to_owned(), v?.clone())))
            .chain(std::iter::once(("PATH".to_owned(), path)))
            .chain(self.env.iter().cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn get<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
        env.iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn version_call_has_no_attachment_vars() {
        let env = PluginCall::new("VERSION", json!({})).environment();
        assert_eq!(get(&env, "CNI_COMMAND"), Some("VERSION"));
        assert_eq!(get(&env, "CNI_PATH"), Some(DEFAULT_CNI_PATH));
        assert_eq!(get(&env, "CNI_NETNS"), None);
        assert_eq!(get(&env, "CNI_CONTAINERID"), None);
        assert!(get(&env, "PATH").is_some());
    }

    #[test]
    fn add_sets_attachment_vars_and_empty_netns_is_kept() {
        let call = PluginCall::add("c1", "", "eth0", json!({"a": 1})).args("K=V");
        let env = call.environment();
        assert_eq!(get(&env, "CNI_COMMAND"), Some("ADD"));
        assert_eq!(get(&env, "CNI_CONTAINERID"), Some("c1"));
        assert_eq!(get(&env, "CNI_NETNS"), Some(""));
        assert_eq!(get(&env, "CNI_IFNAME"), Some("eth0"));
        assert_eq!(get(&env, "CNI_ARGS"), Some("K=V"));
        assert_eq!(call.stdin.to_bytes(), br#"{"a":1}"#);
    }

    #[test]
    fn extra_env_overrides_and_raw_stdin_is_verbatim() {
        let call = PluginCall::del("c", "/x", "eth0", json!({}))
            .env("CNI_IFNAME", "net1")
            .raw_stdin("{not json");
        assert_eq!(get(&call.environment(), "CNI_IFNAME"), Some("net1"));
        assert_eq!(call.stdin.to_bytes(), b"{not json");
    }
}
