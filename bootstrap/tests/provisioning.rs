//! The Ansible roles (`ansible/`) and the Vagrant lab (`vagrant/`), checked
//! with the real tools and without touching a machine: ansible-lint's
//! production profile, a syntax check of the playbook, a check-mode run on
//! this machine of the tasks that need no package repository, `vagrant
//! validate`, every path they name, and the `tailroute init`/`join` command
//! lines the roles build.
//!
//! The tools come from `make test`: `scripts/install-python-tools.sh` builds
//! ansible-core and ansible-lint into a venv whose bin directory arrives in
//! `TAILROUTE_PYTHON_TOOLS`, and `scripts/install-test-deps.sh` installs
//! Debian's vagrant. A missing tool fails the test with the command that
//! installs it; nothing is skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::Value;

/// Flags of `tailroute init`, from the CLI's specification (issue 5).
const INIT_FLAGS: &[&str] = &[
    "--pod-network-cidr",
    "--service-cidr",
    "--control-plane-endpoint",
    "--upload-certs",
    "--kubernetes-version",
    "--cri-socket",
    "--login-server",
    "--auth-key-file",
    "--oauth-client-secret-file",
    "--advertise-tags",
    "--hostname",
    "--approval",
    "--approval-url",
    "--approval-api-key-file",
    "--approval-oauth-client-id",
    "--approval-oauth-client-secret-file",
    "--approval-tailnet",
    "--image",
    "--skip-agent",
    "--dry-run",
];

/// Flags of `tailroute join`, from the same specification, and
/// `--pod-network-cidr`, which the CLI's join takes to give a node a node-ip
/// of each family (the roles pass it for dual-stack and IPv6 pod networks).
const JOIN_FLAGS: &[&str] = &[
    "--pod-network-cidr",
    "--token",
    "--discovery-token-ca-cert-hash",
    "--control-plane",
    "--certificate-key",
    "--login-server",
    "--auth-key-file",
    "--oauth-client-secret-file",
    "--advertise-tags",
    "--hostname",
    "--cri-socket",
    "--dry-run",
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bootstrap/ has a parent")
        .to_path_buf()
}

fn ansible_dir() -> PathBuf {
    repo_root().join("ansible")
}

/// A directory of its own under the system's temp dir, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "tailroute-provisioning-{name}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create a scratch directory");
        Scratch(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The venv's bin directory with ansible-playbook and ansible-lint.
fn python_tools() -> PathBuf {
    let install = "run `scripts/install-python-tools.sh` and set \
                   TAILROUTE_PYTHON_TOOLS to the directory it prints \
                   (`make test` does both)";
    let dir = std::env::var_os("TAILROUTE_PYTHON_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("TAILROUTE_PYTHON_TOOLS is not set: {install}"));
    for tool in ["ansible-playbook", "ansible-lint"] {
        assert!(
            dir.join(tool).is_file(),
            "{} is missing: {install}",
            dir.join(tool).display()
        );
    }
    dir
}

/// An Ansible command from the venv, with Ansible's own state (temp files,
/// collections cache) in `home` instead of ~/.ansible.
fn ansible(tool: &str, home: &Path) -> Command {
    let bin = python_tools();
    let mut cmd = Command::new(bin.join(tool));
    let path = std::env::var("PATH").unwrap_or_default();
    cmd.env("PATH", format!("{}:{path}", bin.display()))
        .env("ANSIBLE_HOME", home)
        .env("ANSIBLE_LOCAL_TEMP", home.join("tmp"))
        .env("ANSIBLE_ROLES_PATH", ansible_dir().join("roles"))
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_FORCE_COLOR", "0")
        .env("NO_COLOR", "1")
        // The roles read these from the controller's environment by default;
        // the tests decide what the roles see.
        .env_remove("TAILROUTE_AUTH_KEY")
        .env_remove("TAILROUTE_APPROVAL_API_KEY")
        .current_dir(ansible_dir());
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}",
        out.status,
        text(out)
    );
}

#[test]
fn ansible_lint_production_profile_passes_offline() {
    let home = Scratch::new("lint");
    let out = run(ansible("ansible-lint", home.path())
        .args(["--offline", "--nocolor"])
        .env("XDG_CACHE_HOME", home.path().join("cache")));
    assert_success(
        "ansible-lint --offline (ansible/.ansible-lint: production profile)",
        &out,
    );
    let said = text(&out);
    assert!(
        said.contains("Profile 'production' was required, and it passed"),
        "ansible-lint passed without checking the production profile:\n{said}"
    );
}

#[test]
fn site_playbook_passes_syntax_check_with_the_example_inventory() {
    let home = Scratch::new("syntax");
    let out = run(ansible("ansible-playbook", home.path()).args([
        "--syntax-check",
        "-i",
        "inventory/example.yml",
        "site.yml",
    ]));
    assert_success("ansible-playbook --syntax-check site.yml", &out);
    // The example inventory's groups are the ones site.yml targets.
    let out = run(ansible("ansible-playbook", home.path()).args([
        "--list-hosts",
        "-i",
        "inventory/example.yml",
        "site.yml",
    ]));
    assert_success("ansible-playbook --list-hosts site.yml", &out);
    let said = text(&out);
    for host in [
        "nuc.home.arpa",
        "worker1.cloud.example",
        "worker2.cloud.example",
    ] {
        assert!(
            said.contains(host),
            "site.yml does not reach {host}:\n{said}"
        );
    }
}

/// What the check-mode run must leave as it was: the files and directories
/// its tasks would write.
fn machine_state() -> BTreeMap<String, String> {
    let mut state = BTreeMap::new();
    for path in [
        "/etc/fstab",
        "/etc/modules-load.d/tailroute.conf",
        "/etc/sysctl.d/90-tailroute.conf",
        "/usr/local/bin/tailroute",
        "/usr/local/bin/tailroute-agent",
        "/opt/cni/bin/tailroute-bridge",
    ] {
        let seen = match fs::read(path) {
            Ok(bytes) => format!("{} bytes: {:?}", bytes.len(), bytes),
            Err(e) => format!("unreadable: {:?}", e.kind()),
        };
        state.insert(path.to_string(), seen);
    }
    for dir in ["/etc/modules-load.d", "/etc/sysctl.d", "/opt/cni/bin"] {
        let names = match fs::read_dir(dir) {
            Ok(entries) => {
                let mut names: Vec<String> = entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect();
                names.sort();
                names.join(",")
            }
            Err(e) => format!("unreadable: {:?}", e.kind()),
        };
        state.insert(format!("{dir}/"), names);
    }
    for key in ["net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"] {
        let value = fs::read_to_string(Path::new("/proc/sys").join(key)).unwrap_or_default();
        state.insert(key.to_string(), value);
    }
    state.insert(
        "/proc/swaps".into(),
        fs::read_to_string("/proc/swaps").unwrap_or_default(),
    );
    state
}

/// The roles' tasks that are safe here, run for real in check mode on this
/// machine (`-i localhost, -c local --check`):
/// - `preflight`: assertions on facts and settings, and the controller-side
///   check for the three binaries; they read only.
/// - `kernel`, `swap`: files (modules-load.d, sysctl.d, fstab), which check
///   mode never writes; `modprobe`, `swapoff` and the sysctl handler are
///   commands, which check mode skips.
/// - `binaries`: copies into /usr/local/bin and /opt/cni/bin, not written
///   in check mode (the binaries are stand-ins in a scratch directory).
///
/// Left out: everything tagged `packages` (the Kubernetes and Tailscale
/// apt repositories are not reachable from CI, get_url asks them even in
/// check mode, and the services they install do not exist here) and the
/// init and join tasks, which need a cluster.
#[test]
fn check_mode_on_this_machine_runs_the_safe_tasks_and_changes_nothing() {
    let scratch = Scratch::new("check");
    let bins = scratch.path().join("bins");
    fs::create_dir_all(&bins).expect("create the stand-in binaries' directory");
    for name in ["tailroute", "tailroute-agent", "tailroute-bridge"] {
        fs::write(bins.join(name), "stand-in").expect("write a stand-in binary");
    }
    let playbook = scratch.path().join("check.yml");
    fs::write(
        &playbook,
        "- name: The node roles in check mode on this machine\n  \
         hosts: localhost\n  gather_facts: true\n  roles:\n    \
         - role: node_prerequisites\n    - role: control_plane\n",
    )
    .expect("write the check playbook");

    let before = machine_state();
    let out = run(ansible("ansible-playbook", scratch.path()).args([
        "-i",
        "localhost,",
        "-c",
        "local",
        "--check",
        "--diff",
        "--tags",
        "preflight,kernel,swap,binaries",
        // Debian's interpreter, which has python3-apt; interpreter
        // discovery would take the first python3 on PATH (pyenv's here).
        "-e",
        "ansible_python_interpreter=/usr/bin/python3",
        "-e",
        &format!("tailroute_binaries_dir={}", bins.display()),
        playbook.to_str().expect("a UTF-8 temp path"),
    ]));
    let after = machine_state();
    assert_success("the check-mode run on localhost", &out);
    let said = text(&out);
    for task in [
        "Check that this is a Debian-family system",
        "Check the pinned Kubernetes version",
        "Load the kernel modules at boot",
        "Set the sysctls at boot and now",
        "Keep swap off after a reboot",
        "Check that the controller has the three binaries",
        "Install the tailroute-bridge CNI plugin",
        "Check the pod network and the approval settings",
    ] {
        assert!(
            said.contains(task),
            "the check run did not reach `{task}`:\n{said}"
        );
    }
    assert!(
        said.contains("failed=0") && !said.contains("Install kubeadm"),
        "the check run ran a package task or failed:\n{said}"
    );
    assert_eq!(before, after, "the check-mode run changed this machine");
}

/// `vagrant validate --ignore-provider` (Debian's vagrant 2.3.4 has the
/// flag): the Vagrantfile evaluates for the default lab and for other
/// sizes, and rejects a nonsense size. It does not look at the provisioner's
/// playbook path; `every_path_the_playbook_and_the_vagrantfile_name_exists`
/// does.
#[test]
fn vagrantfile_validates_for_several_lab_sizes() {
    let scratch = Scratch::new("vagrant");
    let vagrant = "vagrant";
    let validate = |vars: &[(&str, &str)]| -> Output {
        let mut cmd = Command::new(vagrant);
        cmd.args(["validate", "--ignore-provider"])
            .current_dir(repo_root().join("vagrant"))
            .env("VAGRANT_HOME", scratch.path().join("home"))
            .env("VAGRANT_DOTFILE_PATH", scratch.path().join("dotfile"))
            .env("VAGRANT_CHECKPOINT_DISABLE", "1")
            .env("VAGRANT_NO_COLOR", "1");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        cmd.output().unwrap_or_else(|e| {
            panic!(
                "cannot run {vagrant}: {e}: install Debian's vagrant \
                 (apt-get install vagrant; scripts/install-test-deps.sh does it)"
            )
        })
    };

    let out = validate(&[]);
    assert_success("vagrant validate --ignore-provider (3 nodes)", &out);
    assert!(text(&out).contains("node3"), "{}", text(&out));
    for vars in [
        &[("TAILROUTE_VAGRANT_NODES", "1")][..],
        &[
            ("TAILROUTE_VAGRANT_NODES", "5"),
            ("TAILROUTE_VAGRANT_CONTROL_PLANES", "3"),
            ("TAILROUTE_VAGRANT_MEMORY", "4096"),
            ("TAILROUTE_VAGRANT_CPUS", "4"),
            ("TAILROUTE_VAGRANT_BOX", "debian/bookworm64"),
            ("TAILROUTE_LOGIN_SERVER", "https://headscale.example.com"),
        ][..],
    ] {
        let out = validate(vars);
        assert_success(&format!("vagrant validate with {vars:?}"), &out);
    }
    for vars in [
        &[("TAILROUTE_VAGRANT_NODES", "three")][..],
        &[
            ("TAILROUTE_VAGRANT_NODES", "2"),
            ("TAILROUTE_VAGRANT_CONTROL_PLANES", "3"),
        ][..],
    ] {
        let out = validate(vars);
        assert!(
            !out.status.success(),
            "vagrant validate accepted {vars:?}:\n{}",
            text(&out)
        );
    }
    assert!(
        !repo_root().join("vagrant/.vagrant").exists() || vagrant_dir_predates_test(),
        "vagrant validate wrote vagrant/.vagrant into the checkout"
    );
}

/// A developer's own `vagrant up` leaves vagrant/.vagrant; the test only
/// must not make one.
fn vagrant_dir_predates_test() -> bool {
    fs::metadata(repo_root().join("vagrant/.vagrant/machines")).is_ok()
}

/// The key/value lines under each `module:` line of a YAML task file, one
/// map per use of the module: enough to read the task arguments the roles
/// write one per line.
fn module_args(yaml: &str, module: &str) -> Vec<BTreeMap<String, String>> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.trim_start().trim_start_matches("- ");
        if trimmed.trim_end() != format!("{module}:") {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let mut args = BTreeMap::new();
        for next in &lines[i + 1..] {
            let next_indent = next.len() - next.trim_start().len();
            if next.trim().is_empty() {
                continue;
            }
            if next_indent <= indent {
                break;
            }
            if let Some((k, v)) = next.trim().split_once(':') {
                args.insert(k.trim().to_string(), unquote(v.trim()));
            }
        }
        found.push(args);
    }
    found
}

/// The values of `key: value` lines (and `- key: value` items).
fn values_of(yaml: &str, key: &str) -> Vec<String> {
    yaml.lines()
        .filter_map(|line| {
            let t = line.trim().trim_start_matches("- ");
            t.strip_prefix(&format!("{key}:"))
                .map(|v| unquote(v.trim()))
        })
        .filter(|v| !v.is_empty())
        .collect()
}

fn unquote(v: &str) -> String {
    v.trim_matches('"').trim_matches('\'').to_string()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The role named in site.yml and each role's meta dependencies, with the
/// files every role must have.
fn check_role(roles: &Path, role: &str, problems: &mut Vec<String>) {
    for required in ["tasks/main.yml", "defaults/main.yml", "meta/main.yml"] {
        if !roles.join(role).join(required).is_file() {
            problems.push(format!("role {role} has no {required}"));
        }
    }
}

#[test]
fn every_path_the_playbook_and_the_vagrantfile_name_exists() {
    let ansible = ansible_dir();
    let roles = ansible.join("roles");
    let mut problems = Vec::new();

    // site.yml: its roles, and the groups it targets.
    let site = read(&ansible.join("site.yml"));
    let site_roles = values_of(&site, "role");
    assert!(!site_roles.is_empty(), "site.yml names no role");
    let mut all_roles: BTreeSet<String> = site_roles.iter().cloned().collect();
    let site_groups: BTreeSet<String> = values_of(&site, "hosts")
        .iter()
        .flat_map(|h| h.split(':').map(str::to_string).collect::<Vec<_>>())
        .collect();
    assert_eq!(
        site_groups,
        BTreeSet::from(["control_plane".to_string(), "workers".to_string()]),
        "site.yml targets other groups than control_plane and workers"
    );

    // Every role: required files, meta dependencies, task files included or
    // imported, roles included, templates, handlers notified.
    let role_dirs: Vec<String> = fs::read_dir(&roles)
        .expect("ansible/roles")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for role in &role_dirs {
        let dir = roles.join(role);
        check_role(&roles, role, &mut problems);
        for dep in values_of(&read(&dir.join("meta/main.yml")), "role") {
            all_roles.insert(dep);
        }
        let handlers = dir.join("handlers/main.yml");
        let handler_names: BTreeSet<String> = if handlers.is_file() {
            values_of(&read(&handlers), "name").into_iter().collect()
        } else {
            BTreeSet::new()
        };
        for tasks_file in fs::read_dir(dir.join("tasks")).expect("tasks/") {
            let tasks_file = tasks_file.expect("a tasks/ entry").path();
            let tasks = read(&tasks_file);
            let at = |what: String| format!("{}: {what}", tasks_file.display());
            for module in [
                "ansible.builtin.import_tasks",
                "ansible.builtin.include_tasks",
            ] {
                for line in tasks.lines() {
                    if let Some(file) = line.trim().strip_prefix(&format!("{module}:")) {
                        let file = unquote(file.trim());
                        if !dir.join("tasks").join(&file).is_file() {
                            problems.push(at(format!("{module} {file}: no such file")));
                        }
                    }
                }
            }
            for module in [
                "ansible.builtin.include_role",
                "ansible.builtin.import_role",
            ] {
                for args in module_args(&tasks, module) {
                    let name = args.get("name").cloned().unwrap_or_default();
                    all_roles.insert(name.clone());
                    let from = args.get("tasks_from").cloned().unwrap_or("main.yml".into());
                    if !roles.join(&name).join("tasks").join(&from).is_file() {
                        problems.push(at(format!(
                            "{module} {name} tasks_from {from}: no such file"
                        )));
                    }
                }
            }
            for args in module_args(&tasks, "ansible.builtin.template") {
                let src = args.get("src").cloned().unwrap_or_default();
                if !dir.join("templates").join(&src).is_file() {
                    problems.push(at(format!("template {src}: not in {role}/templates")));
                }
            }
            for handler in values_of(&tasks, "notify") {
                if !handler_names.contains(&handler) {
                    problems.push(at(format!("notify {handler}: no such handler in {role}")));
                }
            }
        }
    }
    for role in &all_roles {
        if !role_dirs.contains(role) {
            problems.push(format!(
                "role {role} is used but ansible/roles/{role} does not exist"
            ));
        }
    }

    // The Vagrantfile: its playbook, and the groups it generates.
    let vagrant_dir = repo_root().join("vagrant");
    let vagrantfile = read(&vagrant_dir.join("Vagrantfile"));
    let playbooks: Vec<String> = vagrantfile
        .lines()
        .filter_map(|l| l.trim().strip_prefix("ansible.playbook ="))
        .map(|v| unquote(v.trim()))
        .collect();
    assert_eq!(
        playbooks.len(),
        1,
        "the Vagrantfile should name one playbook"
    );
    let playbook = vagrant_dir.join(&playbooks[0]);
    if fs::canonicalize(&playbook).ok() != fs::canonicalize(ansible.join("site.yml")).ok() {
        problems.push(format!(
            "the Vagrantfile's playbook {} is not ansible/site.yml",
            playbooks[0]
        ));
    }
    for group in &site_groups {
        if !vagrantfile.contains(&format!("\"{group}\" =>")) {
            problems.push(format!(
                "the Vagrantfile does not generate the group {group}"
            ));
        }
    }
    if !vagrantfile.contains("ansible.limit = \"all\"") {
        problems.push("the Vagrantfile's provisioner does not run on all VMs".into());
    }

    // The inventory example and the documentation.
    let inventory = read(&ansible.join("inventory/example.yml"));
    for group in &site_groups {
        if !inventory.contains(&format!("    {group}:")) {
            problems.push(format!("inventory/example.yml has no group {group}"));
        }
    }
    for doc in [
        "vagrant/README.md",
        "docs/ansible-vagrant.md",
        "ansible/.ansible-lint",
    ] {
        if !repo_root().join(doc).is_file() {
            problems.push(format!("{doc} is missing"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The command lines the roles build, rendered by Ansible from the roles'
/// own defaults and vars, with `settings` as extra vars and stand-ins for
/// what tasks register at run time (the join command file, a fresh token,
/// kubeadm's version, a certificate key).
fn rendered_command_lines(settings: &Value) -> BTreeMap<String, Vec<String>> {
    static RENDERS: AtomicUsize = AtomicUsize::new(0);
    let scratch = Scratch::new(&format!(
        "render-{}",
        RENDERS.fetch_add(1, Ordering::Relaxed)
    ));
    let roles = ansible_dir().join("roles");
    let out_file = scratch.path().join("argv.json");
    let mut vars_files = String::new();
    for role in ["tailroute", "control_plane", "workers"] {
        for f in ["defaults/main.yml", "vars/main.yml"] {
            vars_files += &format!("    - {}\n", roles.join(role).join(f).display());
        }
    }
    let playbook = scratch.path().join("render.yml");
    fs::write(
        &playbook,
        format!(
            "- name: Render the command lines\n  hosts: localhost\n  gather_facts: false\n  \
             vars_files:\n{vars_files}  tasks:\n    - name: Write them\n      \
             ansible.builtin.copy:\n        dest: {out}\n        mode: \"0600\"\n        \
             content: >-\n          {{{{ {{'init': control_plane_init_argv + tailroute_secret_args_init,\n          \
             'control_plane_join': control_plane_join_argv + tailroute_secret_args_join,\n          \
             'worker_join': workers_join_argv + tailroute_secret_args_join,\n          \
             'join_args': tailroute_join_args_fresh}} | to_json }}}}\n",
            out = out_file.display()
        ),
    )
    .expect("write the render playbook");

    let join_file = "100.64.0.1:6443 --token abcdef.0123456789abcdef \
                     --discovery-token-ca-cert-hash sha256:0f0e0d0c0b0a09080706050403020100 \
                     --control-plane --certificate-key 00112233";
    let mut vars = serde_json::json!({
        "tailroute_join_command_file": {"content": base64(join_file)},
        "tailroute_join_token": {"stdout": "fresh1.fedcba9876543210\n"},
        "control_plane_kubeadm_version": {"stdout": "v1.35.8\n"},
        "control_plane_certificate_key": "ab".repeat(32),
    });
    let map = vars.as_object_mut().expect("an object");
    for (k, v) in settings.as_object().expect("settings are an object") {
        map.insert(k.clone(), v.clone());
    }
    let vars_file = scratch.path().join("vars.json");
    fs::write(&vars_file, vars.to_string()).expect("write the extra vars");
    let mut cmd = ansible("ansible-playbook", scratch.path());
    cmd.args(["-i", "localhost,", "-c", "local"])
        .args(["-e", "ansible_python_interpreter=/usr/bin/python3"])
        .arg("-e")
        .arg(format!("@{}", vars_file.display()))
        .args(["-e", "tailroute_join_args={{ tailroute_join_args_fresh }}"])
        .arg(&playbook);
    let out = run(&mut cmd);
    assert_success("rendering the roles' command lines", &out);
    let json: BTreeMap<String, Vec<String>> =
        serde_json::from_str(&read(&out_file)).expect("the rendered command lines are JSON lists");
    json
}

fn base64(s: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = s.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn flags(argv: &[String]) -> BTreeSet<String> {
    argv.iter()
        .filter(|a| a.starts_with("--"))
        .cloned()
        .collect()
}

/// The flags `tailroute <subcommand> --help` lists, once the CLI has the
/// subcommand (issue 5 lands it); None while it does not.
fn help_flags(subcommand: &str) -> Option<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_tailroute"))
        .args([subcommand, "--help"])
        .output()
        .expect("run target/.../tailroute");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Guards the contract between the roles and the CLI: every flag the roles
/// put on a `tailroute init` or `tailroute join` command line, with every
/// setting on and with the defaults, is one the CLI's specification lists
/// and, once the built `tailroute` has the subcommand, one its `--help`
/// shows. Also pins the default command lines and the join command's
/// rewriting (fresh token in, HA flags of the file out), and that no secret
/// reaches a command line.
#[test]
fn roles_pass_only_flags_tailroute_init_and_join_accept() {
    let all_on = serde_json::json!({
        "tailroute_login_server": "https://headscale.example.com",
        "tailroute_advertise_tags": "tag:k8s-node",
        "tailroute_hostname": "nuc",
        "tailroute_cri_socket": "unix:///run/containerd/containerd.sock",
        "tailroute_service_cidr": "10.96.0.0/12",
        "tailroute_control_plane_endpoint": "k8s.example.ts.net:6443",
        "tailroute_upload_certs": true,
        "tailroute_kubernetes_version": "v1.35.8",
        "tailroute_approval": "tailscale",
        "tailroute_approval_url": "https://headscale.example.com",
        "tailroute_approval_oauth_client_id": "client-id",
        "tailroute_approval_tailnet": "example.com",
        "tailroute_image": "ghcr.io/tailroute/tailroute:test",
        "tailroute_skip_agent": true,
        "tailroute_auth_key": "SECRET-auth-key",
        "tailroute_oauth_client_secret": "SECRET-oauth",
        "tailroute_approval_api_key": "SECRET-api-key",
        "tailroute_approval_oauth_client_secret": "SECRET-approval-oauth",
    });
    let all = rendered_command_lines(&all_on);
    let mut dual_stack = all_on.clone();
    dual_stack["tailroute_pod_network_cidr"] = "10.244.0.0/16,fd00:10:244::/56".into();
    let dual = rendered_command_lines(&dual_stack);
    for line in ["worker_join", "control_plane_join"] {
        assert!(
            dual[line]
                .windows(2)
                .any(|w| w[0] == "--pod-network-cidr" && w[1] == "10.244.0.0/16,fd00:10:244::/56"),
            "a dual-stack {line} does not pass the pod network: {:?}",
            dual[line]
        );
    }
    let defaults = rendered_command_lines(&serde_json::json!({}));

    let tr = "/usr/local/bin/tailroute";
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        defaults["init"],
        s(&[
            tr,
            "init",
            "--pod-network-cidr",
            "10.244.0.0/16",
            "--kubernetes-version",
            "v1.35.8",
            "--approval",
            "none"
        ])
    );
    let join_args = s(&[
        "100.64.0.1:6443",
        "--token",
        "fresh1.fedcba9876543210",
        "--discovery-token-ca-cert-hash",
        "sha256:0f0e0d0c0b0a09080706050403020100",
    ]);
    assert_eq!(
        defaults["join_args"], join_args,
        "the join command file, rewritten"
    );
    assert_eq!(
        defaults["worker_join"],
        [s(&[tr, "join"]), join_args.clone()].concat()
    );
    let key = "ab".repeat(32);
    assert_eq!(
        defaults["control_plane_join"],
        [
            s(&[tr, "join"]),
            join_args,
            s(&["--control-plane", "--certificate-key", &key])
        ]
        .concat()
    );

    let all_init = flags(&all["init"]);
    for expected in [
        "--auth-key-file",
        "--approval-api-key-file",
        "--upload-certs",
        "--login-server",
        "--skip-agent",
    ] {
        assert!(
            all_init.contains(expected),
            "init with every setting lacks {expected}: {:?}",
            all["init"]
        );
    }
    assert!(flags(&all["worker_join"]).contains("--oauth-client-secret-file"));
    assert!(
        !flags(&all["worker_join"]).contains("--approval-api-key-file"),
        "the agent's credential goes to init only"
    );

    let rendered = serde_json::to_string(&all).expect("serialise");
    assert!(
        !rendered.contains("SECRET"),
        "a secret is on a command line: {rendered}"
    );

    let mut problems = Vec::new();
    for (subcommand, spec, lines) in [
        ("init", INIT_FLAGS, ["init"].as_slice()),
        (
            "join",
            JOIN_FLAGS,
            ["worker_join", "control_plane_join"].as_slice(),
        ),
    ] {
        let help = help_flags(subcommand);
        if help.is_none() {
            eprintln!(
                "tailroute has no `{subcommand}` yet: checking against the specification only"
            );
        }
        for line in lines {
            let used: BTreeSet<String> = [&all, &defaults, &dual]
                .iter()
                .flat_map(|lines| flags(&lines[*line]))
                .collect();
            for flag in &used {
                if !spec.contains(&flag.as_str()) {
                    problems.push(format!("{line}: {flag} is not a flag of tailroute {subcommand} in the specification"));
                }
                if let Some(help) = &help {
                    let listed = help
                        .split(|c: char| {
                            c.is_whitespace() || c == ',' || c == '=' || c == '<' || c == '['
                        })
                        .any(|word| word == flag);
                    if !listed {
                        problems.push(format!(
                            "{line}: {flag} is not in `tailroute {subcommand} --help`"
                        ));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
