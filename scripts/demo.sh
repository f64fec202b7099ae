#!/bin/bash
# nbsnap demo: build, then save a running "notebook" as a new image in a local registry.
#
#   ./scripts/demo.sh               (as root; installs what it needs from Debian packages first)
#
# 0. installs the build and demo dependencies (scripts/install-deps.sh; only what is missing)
# 1. builds the project into build/ (cmake + make)
# 2. starts a private registry (Debian's docker-registry) on 127.0.0.1 only, with its data in a temp dir
# 3. builds a small two-layer base image from files on this machine and pushes it there
# 4. mounts a notebook root filesystem: an overlayfs on the base rootfs, a work volume bind mount at
#    /home/ma-user/work and a file bind mount on /etc/hosts (like a notebook container)
# 5. `nbsnap baseline`, then a user's changes: a pip --user install, a VS Code extension, an edited /etc file,
#    a deleted file, plus a pip cache and work-volume files that must not be saved
# 6. `nbsnap save`, prints its JSON, shows the pushed image (skopeo inspect) and the new layer's listing
# 7. unmounts and stops the registry; the demo dir (registry data, logs) is kept and printed
#
# Env: NBSNAP_DEMO_DIR (default: a new ${TMPDIR:-/tmp}/nbsnap-demo.XXXXXX), NBSNAP_BUILD_DIR (default build/),
#      NBSNAP_DEMO_SKIP_BUILD=1 to use an existing build.
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        echo "demo.sh: needs root (overlay and bind mounts, mknod, chown); re-running with sudo" >&2
        exec sudo -E bash "$0" "$@"
    fi
    echo "demo.sh: must run as root (overlay and bind mounts, mknod, chown)" >&2
    exit 1
fi

"$SRC/scripts/install-deps.sh"

# shellcheck source=tests/lib/common.sh
source "$SRC/tests/lib/common.sh"
# shellcheck source=tests/lib/registry.sh
source "$SRC/tests/lib/registry.sh"
# shellcheck source=tests/lib/base-image.sh
source "$SRC/tests/lib/base-image.sh"
# shellcheck source=tests/lib/notebook.sh
source "$SRC/tests/lib/notebook.sh"

banner() { printf '\n\033[1m### %s\033[0m\n' "$*"; }
missing=()
for c in cmake make cc umoci skopeo curl tar gzip setfattr setcap "$PYTHON" /usr/bin/docker-registry; do
    command -v "$c" >/dev/null 2>&1 || missing+=("$c")
done
if ((${#missing[@]})); then
    echo "demo.sh: missing: ${missing[*]} -- run scripts/install-deps.sh first" >&2
    exit 1
fi

BUILD=${NBSNAP_BUILD_DIR:-$SRC/build}
if [[ ${NBSNAP_DEMO_SKIP_BUILD:-0} != 1 ]]; then
    banner "1. build (cmake -S $SRC -B $BUILD; cmake --build $BUILD -j2)"
    cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo >"${TMPDIR:-/tmp}/nbsnap-demo-cmake.log" 2>&1 ||
        { tail -n 30 "${TMPDIR:-/tmp}/nbsnap-demo-cmake.log" >&2; fail "cmake configure failed"; }
    cmake --build "$BUILD" -j2 || fail "build failed"
fi
NBSNAP=$BUILD/agent/nbsnap
[[ -x $NBSNAP ]] || fail "$NBSNAP was not built"

DEMO=${NBSNAP_DEMO_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/nbsnap-demo.XXXXXX")}
mkdir -p "$DEMO"
echo "demo dir: $DEMO"

banner "2. local registry on 127.0.0.1"
registry_start "$DEMO/registry"
echo "registry: $REGISTRY_URL (data: $DEMO/registry/data)"

banner "3. base image $REGISTRY_HOST/demo/notebook-base:v1"
base_image_build "$DEMO/base" demo/notebook-base:v1
skopeo inspect --tls-verify=false "docker://$REGISTRY_HOST/demo/notebook-base:v1" |
    "$PYTHON" -c 'import json,sys; j=json.load(sys.stdin); print("layers:"); [print("  ", l) for l in j["Layers"]]'

banner "4. notebook root filesystem (overlay + work volume + /etc/hosts bind mount)"
notebook_mount "$DEMO/notebook" "$BASE_ROOTFS"
M=$NB_MERGED
findmnt -R -o TARGET,FSTYPE "$M" || true

banner "5. nbsnap baseline, then the user's changes"
STATE=$DEMO/state
"$NBSNAP" baseline --root "$M" --state-dir "$STATE" --exclude /home/ma-user/.cache/pip
echo "baseline recorded in $STATE"
U=$M/home/ma-user
SP=$U/.local/lib/python3.11/site-packages
# "pip install --user demo-requests" (a package, its dist-info and a console script)
mkdir -p "$SP/demo_requests/adapters" "$SP/demo_requests-2.31.0.dist-info" "$U/.local/bin"
for m in __init__ api sessions models utils; do
    printf '"""demo_requests.%s"""\n\ndef %s():\n    return "%s"\n' "$m" "$m" "$m" >"$SP/demo_requests/$m.py"
done
echo 'class HTTPAdapter: pass' >"$SP/demo_requests/adapters/__init__.py"
printf 'Metadata-Version: 2.1\nName: demo-requests\nVersion: 2.31.0\n' >"$SP/demo_requests-2.31.0.dist-info/METADATA"
echo pip >"$SP/demo_requests-2.31.0.dist-info/INSTALLER"
printf '#!/usr/bin/python3\nfrom demo_requests import api\nprint(api.api())\n' >"$U/.local/bin/demo-requests"
chmod 0755 "$U/.local/bin/demo-requests"
# pip's cache: excluded from the image (--exclude /home/ma-user/.cache/pip)
mkdir -p "$U/.cache/pip/http/a/b"
head -c 200000 /dev/urandom >"$U/.cache/pip/http/a/b/cached-wheel"
# a VS Code server extension
EXT=$U/.vscode-server/extensions/ms-python.python-2024.2.1
mkdir -p "$EXT/out" "$EXT/resources"
printf '{"name": "python", "publisher": "ms-python", "version": "2024.2.1"}\n' >"$EXT/package.json"
head -c 50000 /dev/urandom | base64 >"$EXT/out/extension.js"
printf '<svg/>\n' >"$EXT/resources/icon.svg"
chown -R 1000:100 "$U/.local" "$U/.cache" "$U/.vscode-server"
# an edited /etc file and a deleted file
echo 'export HF_ENDPOINT=https://mirror.example.com' >>"$M/etc/environment"
rm "$M/opt/t/delete-file.txt"
# work volume files: never saved
echo 'my experiment results' >"$U/work/results.csv"
echo "changed since the baseline (under /home/ma-user):"
find "$M/home/ma-user" -newer "$STATE" -not -path "$M/home/ma-user/work*" 2>/dev/null | sed "s|^$M||" | head -n 30 || true

# A tag of its own per run: nbsnap refuses to replace a tag the registry already has (--overwrite would),
# and a demo dir given again (NBSNAP_DEMO_DIR) keeps its registry.
TAG=v1-$(date -u +%Y%m%d%H%M%S)
banner "6. nbsnap save -> $REGISTRY_HOST/demo/my-notebook:$TAG"
set +e
"$NBSNAP" save --root "$M" --state-dir "$STATE" --registry "$REGISTRY_URL" --base-image demo/notebook-base:v1 \
    --namespace demo --name my-notebook --tag "$TAG" --description 'demo: pip package + VS Code extension' \
    --exclude /home/ma-user/.cache/pip --workspace-id demo-workspace >"$DEMO/save.json" 2>"$DEMO/save.log"
rc=$?
set -e
echo "nbsnap save exit status: $rc (log: $DEMO/save.log)"
"$PYTHON" -m json.tool "$DEMO/save.json" 2>/dev/null || cat "$DEMO/save.json"
if [[ $rc -ne 0 ]]; then
    tail -n 20 "$DEMO/save.log" >&2
    fail "nbsnap save failed"
fi

banner "skopeo inspect docker://$REGISTRY_HOST/demo/my-notebook:$TAG"
skopeo inspect --tls-verify=false "docker://$REGISTRY_HOST/demo/my-notebook:$TAG"
skopeo inspect --tls-verify=false --config "docker://$REGISTRY_HOST/demo/my-notebook:$TAG" |
    "$PYTHON" -c 'import json,sys; j=json.load(sys.stdin); print("history:"); [print("  ", h) for h in j.get("history", [])]'

banner "the new layer"
LAYER=$(skopeo inspect --tls-verify=false --raw "docker://$REGISTRY_HOST/demo/my-notebook:$TAG" |
    "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["layers"][-1]["digest"])')
fetch_blob demo/my-notebook "$LAYER" "$DEMO/new-layer.tar.gz"
echo "$LAYER ($(stat -c %s "$DEMO/new-layer.tar.gz") bytes compressed)"
tar --warning=no-unknown-keyword -tzvf "$DEMO/new-layer.tar.gz"
echo
if tar --warning=no-unknown-keyword -tzf "$DEMO/new-layer.tar.gz" | grep -qE '(^|/)(work|\.cache/pip)(/|$)|etc/hosts'; then
    echo "!! the layer contains the work volume, the pip cache or /etc/hosts" >&2
else
    echo "not in the layer, as expected: /home/ma-user/work (volume), /home/ma-user/.cache/pip (excluded), /etc/hosts (bind mount)"
fi

banner "7. clean up"
notebook_umount "$DEMO/notebook"
registry_stop
echo "registry stopped; its data (with both images) is kept in $DEMO/registry/data"
echo "to look again: docker-registry serve $DEMO/registry/config.yml, then skopeo inspect --tls-verify=false docker://$REGISTRY_HOST/demo/my-notebook:$TAG"
echo "remove everything with: rm -rf $DEMO"
