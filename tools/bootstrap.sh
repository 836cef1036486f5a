#!/usr/bin/env bash
# Prepares a fresh Debian 12 machine for freezeframe: the apt packages the tests and the demo use,
# then a virtual environment in .venv with freezeframe installed in editable mode.
# Idempotent: re-running installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_packages=(python3 python3-venv python3-pip acl attr e2fsprogs util-linux btrfs-progs xfsprogs
    redis-server postgresql mariadb-server qemu-system-x86 qemu-utils qemu-guest-agent busybox-static
    openssh-server lvm2 thin-provisioning-tools)
# The benchmarks run restic and borg beside freezeframe: `make bench*` asks for them here.
if [ -n "${BOOTSTRAP_EXTRA_APT:-}" ]; then
    read -r -a extra <<<"$BOOTSTRAP_EXTRA_APT"
    apt_packages+=("${extra[@]}")
fi
missing=()
for pkg in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "bootstrap: missing apt packages (${missing[*]}); run as root or install them" >&2
        exit 1
    fi
    echo "bootstrap: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    # The SFTP tests start their own sshd on loopback; the package's system sshd (port 22 on
    # every interface) must not start where bootstrap installed it: masked for the install,
    # then left installed but disabled (without systemd, the init script's start is undone).
    new_sshd=
    if [[ " ${missing[*]} " == *" openssh-server "* ]]; then
        new_sshd=init
        if [ -d /run/systemd/system ]; then
            new_sshd=systemd
            systemctl mask -q ssh.service ssh.socket
        fi
    fi
    apt-get install -y -q "${missing[@]}" >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
    if [ "$new_sshd" = systemd ]; then
        systemctl unmask -q ssh.service ssh.socket
        systemctl disable -q ssh.service ssh.socket 2>/dev/null || true
    elif [ "$new_sshd" = init ] && [ -x /etc/init.d/ssh ]; then
        /etc/init.d/ssh stop >/dev/null 2>&1 || true
    fi
fi

python=${PYTHON:-python3}
stamp=.venv/.installed
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --upgrade pip >/dev/null
    .venv/bin/python -m pip install -q -e '.[dev]'
    touch "$stamp"
fi
