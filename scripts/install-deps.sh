#!/bin/bash
# Installs everything nbsnap needs to build, run its demo and run its tests, from Debian 12 packages.
# Idempotent: asks apt only for what is missing. Run as root.
set -euo pipefail

build=(build-essential cmake pkg-config clang clang-format
       libarchive-dev libcurl4-openssl-dev libcjson-dev libssl-dev zlib1g-dev libisal-dev libzstd-dev
       libmount-dev libsystemd-dev libmicrohttpd-dev libinih-dev libgnutls28-dev
       scdoc) # scdoc: the man pages (docs/man/*.scd; without it the build skips them)
run=(ca-certificates curl)
# podman + runc: save-podman runs the saved images under them (as root; podman brings conmon and containers-common;
# its storage is kernel overlayfs and it runs with --network none, so no recommends are needed; see tests/lib/podman.sh)
tests=(docker-registry skopeo umoci oci-image-tool isal pigz attr libcap2-bin python3 apache2-utils openssl time
       systemd file tar gzip iproute2 golang-go dpkg-dev util-linux podman runc man-db groff-base
       nginx) # nginx: the load balancer of tests/lib/fleet-registry.sh (run there with its own config, never as a service)

missing=()
for p in "${build[@]}" "${run[@]}" "${tests[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
    echo "install-deps: all packages present" >&2
    exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "install-deps: missing packages (${missing[*]}); run as root" >&2
    exit 1
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian's docker-registry and nginx packages may start services listening on :5000 and :80 on machines with
# systemd; the tests start their own on 127.0.0.1 (free ports), so stop them where they exist.
if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
    systemctl disable --now docker-registry.service >/dev/null 2>&1 || true
    systemctl disable --now nginx.service >/dev/null 2>&1 || true
elif [[ -x /etc/init.d/nginx ]]; then
    /etc/init.d/nginx stop >/dev/null 2>&1 || true
fi
