#!/usr/bin/env bash
# Build the Python tools that bootstrap/tests/provisioning.rs runs against
# ansible/ (ansible-playbook, ansible-lint) into a virtualenv in a versioned
# cache: $CACHE/tools/python-tools-<ansible-core>-<ansible-lint>-<pins hash>/.
# Everything comes from PyPI, every package pinned (below), so a run next
# year resolves the same set.
#
# Safe to run again: a warm run only checks that the venv's tools start.
# The venv is built in <dir>.tmp and renamed when complete, so an interrupted
# build is never taken for a finished one.
#
# Prints nothing on success but the venv's bin directory on the last line.
set -euo pipefail

# ansible-core 2.19 is the newest line that runs on Debian 12's Python 3.11
# (2.20 needs 3.12). The rest is what these two resolve to, pinned.
ANSIBLE_CORE_VERSION=2.19.14
ANSIBLE_LINT_VERSION=26.10.1
PINS="ansible-core==$ANSIBLE_CORE_VERSION
ansible-lint==$ANSIBLE_LINT_VERSION
ansible-compat==26.10.0
attrs==26.1.0
black==26.10.1
bracex==3.2.2
cffi==2.1.1
click==8.5.1
cryptography==50.0.2
distro==1.9.0
filelock==4.2.11
Jinja2==3.1.6
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
MarkupSafe==3.0.4
mypy_extensions==1.2.0
packaging==26.3
pathspec==1.1.1
platformdirs==4.14.7
pycparser==3.12
pytokens==0.4.1
PyYAML==6.0.3
referencing==0.37.0
resolvelib==1.2.1
rpds-py==2026.9.1
ruamel.yaml==0.19.1
subprocess-tee==0.4.2
typing_extensions==4.16.0
wcmatch==12.0.1
yamllint==1.38.0"

# Debian's interpreter, not whatever python3 is first on PATH: the venv
# links to it, and a system Python does not move under the cache.
PYTHON=${TAILROUTE_PYTHON:-/usr/bin/python3}
CACHE=${TAILROUTE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tailroute}
pins_hash=$(printf '%s\n' "$PINS" | sha256sum | cut -c1-12)
TOOLS_DIR=$CACHE/tools/python-tools-$ANSIBLE_CORE_VERSION-$ANSIBLE_LINT_VERSION-$pins_hash

die() { echo "install-python-tools: $*" >&2; exit 1; }

# Not `ansible-lint --version`: that asks GitHub for the newest release.
tools_start() {
  "$1/bin/ansible-playbook" --version >/dev/null 2>&1 \
    && "$1/bin/python" -c 'import ansiblelint.__main__' 2>/dev/null \
    && [ -x "$1/bin/ansible-lint" ]
}

if [ -d "$TOOLS_DIR" ] && tools_start "$TOOLS_DIR"; then
  echo "$TOOLS_DIR/bin"
  exit 0
fi

[ -x "$PYTHON" ] || die "$PYTHON not found: install Debian's Python (apt-get install python3 python3-venv) or set TAILROUTE_PYTHON"
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null \
  || die "$PYTHON cannot make a virtualenv: apt-get install python3-venv (scripts/install-test-deps.sh installs it)"

echo "install-python-tools: building ansible-core $ANSIBLE_CORE_VERSION and ansible-lint $ANSIBLE_LINT_VERSION into $TOOLS_DIR" >&2
rm -rf "$TOOLS_DIR.tmp"
mkdir -p "$(dirname "$TOOLS_DIR")"
"$PYTHON" -m venv "$TOOLS_DIR.tmp" >&2 || die "$PYTHON -m venv $TOOLS_DIR.tmp failed"
pins_file=$(mktemp)
trap 'rm -f "$pins_file"' EXIT
printf '%s\n' "$PINS" >"$pins_file"
# --no-deps with the complete pinned set: nothing outside the list comes in.
"$TOOLS_DIR.tmp/bin/pip" install --quiet --disable-pip-version-check --no-input --no-deps \
    --only-binary=:all: -r "$pins_file" >&2 \
  || die "pip install into $TOOLS_DIR.tmp failed (is PyPI reachable?)"
"$TOOLS_DIR.tmp/bin/pip" check >&2 || die "the pinned set is inconsistent (pip check): update the pins in $0"
# The venv records its own path in its scripts: build it in place under the
# final name's sibling, then fix the shebangs and activate scripts on rename.
rm -rf "$TOOLS_DIR"
mv "$TOOLS_DIR.tmp" "$TOOLS_DIR"
grep -rlF "$TOOLS_DIR.tmp" "$TOOLS_DIR/bin" | while read -r f; do
  sed -i "s|$TOOLS_DIR.tmp|$TOOLS_DIR|g" "$f"
done
tools_start "$TOOLS_DIR" || die "the tools in $TOOLS_DIR do not start after the build"
echo "$TOOLS_DIR/bin"
