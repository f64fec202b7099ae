#!/bin/bash
# shellcheck disable=SC2016,SC2034 # check "..." eval '...' assertions expand when they run (and use these)
# nbsnap save --compression zstd: the new layer is application/vnd.oci.image.layer.v1.tar+zstd in a real
# registry, checked with clients that are not ours: skopeo inspect --raw (media types), skopeo copy to an oci:
# layout (containers/image reads the blob), zstd -t (the frame and its checksum), zstd -dc | sha256sum (= the
# config's diff_id). The content: the decompressed tar is byte for byte the tar of a gzip save of the same
# tree (same diff_id), and skopeo re-compressing the zstd layer to gzip (containers/image's Go zstd decoder,
# the one podman and CRI-O pull with) gives an image that umoci unpacks to the notebook's tree (treecmp).
# umoci itself is also tried on the zstd image: Debian 12's umoci 0.4.7 cannot unpack zstd layers, so that
# is a note, not a check. Saving the same tree with 1 thread gives the same layer digest as with all CPUs.
# A Docker schema2 base becomes an OCI image (schema2 has no zstd type; containers/image falls back to OCI
# the same way, see save.c): base layers keep their digests.
# Bad values (--compression lz4, levels out of range, in nbsnap and nbsnapd) fail clearly and push nothing.
#
# Run: ctest -R integration/save-zstd   (or: sudo NBSNAP=build/agent/nbsnap bash tests/integration/save-zstd.sh)
set -euo pipefail
LIB=$(cd "$(dirname "${BASH_SOURCE[0]}")/../lib" && pwd)
# shellcheck source=tests/lib/common.sh
source "$LIB/common.sh"
# shellcheck source=tests/lib/registry.sh
source "$LIB/registry.sh"
# shellcheck source=tests/lib/base-image.sh
source "$LIB/base-image.sh"
# shellcheck source=tests/lib/notebook.sh
source "$LIB/notebook.sh"

need_root
need_cmd umoci skopeo curl zstd sha256sum setfattr timeout "$PYTHON"
need_nbsnap
scratch_init nbzs

NS=nbsnap-zstd
ZSTD_TYPE=application/vnd.oci.image.layer.v1.tar+zstd
OCI_GZIP_TYPE=application/vnd.oci.image.layer.v1.tar+gzip
OCI_MANIFEST=application/vnd.oci.image.manifest.v1+json

step "registry, base images (OCI and Docker schema2), notebook, baseline"
registry_start "$SCRATCH/registry"
base_image_build "$SCRATCH/base" nbsnap-test/base:v1
base_image_push "$SCRATCH/base" nbsnap-test/base-docker:v1 v2s2
notebook_mount "$SCRATCH/nb" "$BASE_ROOTFS"
M=$NB_MERGED
STATE=$SCRATCH/state
run_nbsnap "$SCRATCH/baseline" baseline --root "$M" --state-dir "$STATE"
[[ $NBSNAP_RC -eq 0 ]] || fail "nbsnap baseline exited $NBSNAP_RC"

step "changes: several zstd jobs' worth of data, deletions, an opaque dir, links, xattrs"
T=$M/opt/t
mkdir -p "$M/opt/zs/lib" "$M/opt/zs/bin"
# ~24 MB of real shared libraries (compressible like a pip install) and 4 MB of noise: several zstd jobs
n=0
while IFS= read -r -d '' f; do
    cp "$f" "$M/opt/zs/lib/" && n=$((n + $(stat -c %s "$f")))
    ((n < 24000000)) || break
done < <(find /usr/lib/x86_64-linux-gnu -maxdepth 1 -name '*.so*' -type f -size +200k -print0 | sort -z)
head -c 4000000 /dev/urandom >"$M/opt/zs/noise.bin"
printf '#!/bin/sh\necho zs\n' >"$M/opt/zs/bin/zs" && chmod 0755 "$M/opt/zs/bin/zs"
ln "$M/opt/zs/bin/zs" "$M/opt/zs/bin/zs-hardlink"
ln -s ../bin/zs "$M/opt/zs/lib/zs-symlink"
setfattr -n user.nbsnap.zstd -v yes "$M/opt/zs/noise.bin"
echo 'appended for zstd' >>"$T/modify.txt"
rm "$T/delete-file.txt"
rm -rf "$T/delete-tree"
rm -rf "$T/recreate" && mkdir "$T/recreate" && echo new >"$T/recreate/new1"
note "added $((n / 1000000)) MB of libraries + 4 MB of noise"

step "bad values fail clearly and push nothing"
COMMON=(--root "$M" --state-dir "$STATE" --registry "$REGISTRY_URL" --base-image nbsnap-test/base:v1 --namespace "$NS")
MARK=$(registry_log_mark)
expect_usage_error() { # expect_usage_error NAME PATTERN ARGS...
    local name=$1 pattern=$2
    shift 2
    run_nbsnap "$SCRATCH/bad-$name" save "${COMMON[@]}" --name "bad-$name" --tag v1 "$@"
    [[ $NBSNAP_RC -eq 2 ]] || { printf '  exit %s, expected 2 (usage)\n' "$NBSNAP_RC" >&2; return 1; }
    grep -q -- "$pattern" "$SCRATCH/bad-$name.err" ||
        { printf '  stderr lacks "%s": %s\n' "$pattern" "$(cat "$SCRATCH/bad-$name.err")" >&2; return 1; }
    [[ $(manifest_status "$NS/bad-$name" v1) == 404 ]] || { printf '  a tag was pushed\n' >&2; return 1; }
}
check "--compression lz4: exit 2, 'takes gzip or zstd', no tag" expect_usage_error lz4 "takes gzip or zstd, not 'lz4'" --compression lz4
check "--compression ZSTD (case matters): exit 2" expect_usage_error upper "takes gzip or zstd" --compression ZSTD
check "--compression zstd --level 20: exit 2" expect_usage_error zl20 "zstd takes 1 to 19" --compression zstd --level 20
check "--level x: exit 2, names both ranges" expect_usage_error lx "gzip 0-9, zstd 1-19" --level x --compression zstd
check "--level 0 --compression zstd: exit 2, says zstd takes 1 to 19" expect_usage_error zl0 "zstd takes 1 to 19" --level 0 --compression zstd
check "--level 12 with gzip (the default): exit 2, says gzip takes 0 to 9" expect_usage_error gl12 "gzip takes 0 to 9" --level 12
check "no blob was uploaded by the bad invocations" eval '[[ -z $(registry_blob_writes_since "$MARK") ]]'
if [[ -n ${NBSNAPD:-} && -x ${NBSNAPD:-} ]]; then
    daemon_refuses() { # daemon_refuses PATTERN ARGS...
        local pattern=$1 rc=0
        shift
        timeout 20 "$NBSNAPD" --config /dev/null --registry "$REGISTRY_URL" --base-image b --project-id p \
            --notebook-id n --listen "unix:$SCRATCH/d.sock" --state-dir "$SCRATCH/dstate" "$@" \
            >"$SCRATCH/nbsnapd.out" 2>&1 || rc=$?
        [[ $rc -ne 0 && $rc -ne 124 ]] || { printf '  nbsnapd exit %s\n' "$rc" >&2; return 1; }
        grep -q -- "$pattern" "$SCRATCH/nbsnapd.out" ||
            { printf '  output lacks "%s": %s\n' "$pattern" "$(cat "$SCRATCH/nbsnapd.out")" >&2; return 1; }
    }
    check "nbsnapd --compression lz4 refuses to start" daemon_refuses "compression takes gzip or zstd, not 'lz4'" --compression lz4
    check "nbsnapd level = 12 with gzip refuses to start" daemon_refuses "level = 12 with compression = gzip" --level 12
    check "nbsnapd level = 20 refuses to start" daemon_refuses "level takes a number from 0 to 19" --compression zstd --level 20
else
    note "NBSNAPD not set: the daemon's config checks are not tried"
fi

# ---------------------------------------------------------------------------------------------------------------
step "save --compression zstd (OCI base)"
run_nbsnap "$SCRATCH/zstd" save "${COMMON[@]}" --name img --tag zstd --compression zstd
[[ $NBSNAP_RC -eq 0 ]] || fail "nbsnap save --compression zstd exited $NBSNAP_RC"
check "save says the layer is zstd" grep -q 'compressed (zstd)' "$SCRATCH/zstd.err"
skopeo inspect --raw --tls-verify=false "docker://$REGISTRY_HOST/$NS/img:zstd" >"$SCRATCH/zstd-manifest.json" ||
    fail "skopeo inspect --raw of $NS/img:zstd failed"
skopeo inspect --raw --tls-verify=false "docker://$REGISTRY_HOST/nbsnap-test/base:v1" >"$SCRATCH/base-manifest.json"
check "skopeo inspect --raw: new layer is $ZSTD_TYPE, manifest is OCI" eval \
    '[[ $(json_get "$SCRATCH/zstd-manifest.json" "j[\"layers\"][-1][\"mediaType\"]") == "$ZSTD_TYPE" &&
        $(json_get "$SCRATCH/zstd-manifest.json" "j[\"mediaType\"]") == "$OCI_MANIFEST" ]]'
check "base layers unchanged (digests, sizes, gzip media types)" "$PYTHON" -c '
import json, sys
b = json.load(open(sys.argv[1]))["layers"]; n = json.load(open(sys.argv[2]))["layers"]
sys.exit(0 if len(n) == len(b) + 1 and n[:-1] == b else 1)' "$SCRATCH/base-manifest.json" "$SCRATCH/zstd-manifest.json"
LAYER=$(json_get "$SCRATCH/zstd-manifest.json" 'j["layers"][-1]["digest"]')
LAYER_SIZE=$(json_get "$SCRATCH/zstd-manifest.json" 'j["layers"][-1]["size"]')
CONFIG=$(json_get "$SCRATCH/zstd-manifest.json" 'j["config"]["digest"]')
fetch_blob "$NS/img" "$LAYER" "$SCRATCH/layer.zst" || fail "cannot fetch the zstd layer $LAYER"
fetch_blob "$NS/img" "$CONFIG" "$SCRATCH/config.json" || fail "cannot fetch the config $CONFIG"
DIFF_ID=$(json_get "$SCRATCH/config.json" 'j["rootfs"]["diff_ids"][-1]')
check "blob size matches the descriptor ($LAYER_SIZE)" eval '[[ $(stat -c %s "$SCRATCH/layer.zst") == "$LAYER_SIZE" ]]'
check "zstd -t accepts the blob (frame and content checksum)" zstd -q -t "$SCRATCH/layer.zst"
check "zstd -dc blob | sha256sum equals the config's diff_id" eval \
    '[[ "sha256:$(zstd -q -dc "$SCRATCH/layer.zst" | sha256sum | cut -d" " -f1)" == "$DIFF_ID" ]]'
check "the blob is one zstd frame (zstd -lv: 1 frame, with a checksum)" eval \
    'zstd -lv "$SCRATCH/layer.zst" 2>&1 | grep -Eq "^# Zstandard Frames: 1$" && zstd -lv "$SCRATCH/layer.zst" 2>&1 | grep -q "Check: XXH64"'
check "config: one more diff_id than the base, history entry added" "$PYTHON" -c '
import json, sys
c = json.load(open(sys.argv[1]))
sys.exit(0 if c["history"][-1]["created_by"] == "nbsnap save" and c["rootfs"]["diff_ids"][-1].startswith("sha256:") else 1)' "$SCRATCH/config.json"

step "independent readers: skopeo copy, umoci, GNU tar"
# /home/ma-user got its work volume mount point before the baseline (as a runtime does): not saved, by design
TREECMP_IGNORE=(--ignore /home/ma-user/work --ignore /etc/hosts --ignore-mtime /home/ma-user)
mkdir -p "$SCRATCH/pz" "$SCRATCH/pg" "$SCRATCH/pd" "$SCRATCH/pdg"
check "skopeo copy to an oci: layout keeps the zstd blob and type" eval '
    skopeo copy --quiet --src-tls-verify=false "docker://$REGISTRY_HOST/$NS/img:zstd" "oci:$SCRATCH/pz/oci:img" &&
    [[ -f $SCRATCH/pz/oci/blobs/sha256/${LAYER#sha256:} ]] &&
    grep -q "$ZSTD_TYPE" "$SCRATCH/pz/oci/blobs/sha256/$(json_get "$SCRATCH/pz/oci/index.json" "j[\"manifests\"][0][\"digest\"]" | cut -d: -f2)"'
if umoci unpack --image "$SCRATCH/pz/oci:img" "$SCRATCH/pz/bundle" >"$SCRATCH/umoci-zstd.log" 2>&1; then
    "$PYTHON" "$LIB/treecmp.py" "${TREECMP_IGNORE[@]}" "$M" "$SCRATCH/pz/bundle/rootfs" \
        >"$SCRATCH/treecmp-umoci.txt" 2>&1 || true
    check "umoci unpacks the zstd image to the notebook's tree" grep -q ' 0 difference(s)' "$SCRATCH/treecmp-umoci.txt"
else
    note "info: $(umoci --version) cannot unpack zstd layers: $(tail -n 1 "$SCRATCH/umoci-zstd.log")"
fi
# containers/image decompresses our zstd (Go klauspost/compress) and re-compresses it as gzip for umoci
if skopeo copy --quiet --src-tls-verify=false --dest-compress-format gzip \
    "docker://$REGISTRY_HOST/$NS/img:zstd" "oci:$SCRATCH/pg/oci:img" 2>"$SCRATCH/skopeo-regzip.err" &&
    umoci unpack --image "$SCRATCH/pg/oci:img" "$SCRATCH/pg/bundle" >"$SCRATCH/umoci-regzip.log" 2>&1; then
    "$PYTHON" "$LIB/treecmp.py" "${TREECMP_IGNORE[@]}" "$M" "$SCRATCH/pg/bundle/rootfs" \
        >"$SCRATCH/treecmp-regzip.txt" 2>&1 || true
    check "zstd layer decoded by containers/image, unpacked by umoci: equals the notebook's tree (treecmp)" \
        grep -q ' 0 difference(s)' "$SCRATCH/treecmp-regzip.txt"
    grep -v '^treecmp:' "$SCRATCH/treecmp-regzip.txt" | head -20 >&2 || true
else
    soft_fail "skopeo --dest-compress-format gzip + umoci unpack of the zstd image failed: $(cat "$SCRATCH/skopeo-regzip.err" "$SCRATCH/umoci-regzip.log" 2>/dev/null | tail -n 3)"
fi
mkdir -p "$SCRATCH/tarx"
check "GNU tar extracts the zstd layer; the new tree equals the notebook's (treecmp of /opt/zs)" eval '
    tar --zstd -xpf "$SCRATCH/layer.zst" -C "$SCRATCH/tarx" --xattrs --xattrs-include="user.*" --numeric-owner &&
    "$PYTHON" "$LIB/treecmp.py" --quiet "$M/opt/zs" "$SCRATCH/tarx/opt/zs" >"$SCRATCH/treecmp-tar.txt" 2>&1'
check "the tar has the whiteouts and the opaque marker" eval '
    [[ -e $SCRATCH/tarx/opt/t/.wh.delete-file.txt && -e $SCRATCH/tarx/opt/t/.wh.delete-tree && -e $SCRATCH/tarx/opt/t/recreate/.wh..wh..opq ]]'

step "same tree: gzip save has the same tar; 1 thread gives the same zstd bytes; level 1"
run_nbsnap "$SCRATCH/gzip" save "${COMMON[@]}" --name img --tag gzip
[[ $NBSNAP_RC -eq 0 ]] || fail "nbsnap save (gzip) of the same tree exited $NBSNAP_RC"
skopeo inspect --raw --tls-verify=false "docker://$REGISTRY_HOST/$NS/img:gzip" >"$SCRATCH/gzip-manifest.json"
GZ_LAYER=$(json_get "$SCRATCH/gzip-manifest.json" 'j["layers"][-1]["digest"]')
GZ_SIZE=$(json_get "$SCRATCH/gzip-manifest.json" 'j["layers"][-1]["size"]')
fetch_blob "$NS/img" "$(json_get "$SCRATCH/gzip-manifest.json" 'j["config"]["digest"]')" "$SCRATCH/gzip-config.json"
check "gzip layer type unchanged ($OCI_GZIP_TYPE)" eval '[[ $(json_get "$SCRATCH/gzip-manifest.json" "j[\"layers\"][-1][\"mediaType\"]") == "$OCI_GZIP_TYPE" ]]'
check "gzip and zstd saves of the same tree: same diff_id (the same tar)" eval \
    '[[ $(json_get "$SCRATCH/gzip-config.json" "j[\"rootfs\"][\"diff_ids\"][-1]") == "$DIFF_ID" ]]'
note "layer sizes: zstd -3 $LAYER_SIZE bytes, gzip (ISA-L -1) $GZ_SIZE bytes"
run_nbsnap "$SCRATCH/zstd-t1" save "${COMMON[@]}" --name img --tag zstd-t1 --compression zstd --threads 1
[[ $NBSNAP_RC -eq 0 ]] || fail "nbsnap save --compression zstd --threads 1 exited $NBSNAP_RC"
skopeo inspect --raw --tls-verify=false "docker://$REGISTRY_HOST/$NS/img:zstd-t1" >"$SCRATCH/zstd-t1-manifest.json"
check "--threads 1 and all CPUs: the same zstd layer digest" eval \
    '[[ $(json_get "$SCRATCH/zstd-t1-manifest.json" "j[\"layers\"][-1][\"digest\"]") == "$LAYER" ]]'
run_nbsnap "$SCRATCH/zstd-l1" save "${COMMON[@]}" --name img --tag zstd-l1 --level 1 --compression zstd
[[ $NBSNAP_RC -eq 0 ]] || fail "nbsnap save --compression zstd --level 1 exited $NBSNAP_RC"
skopeo inspect --raw --tls-verify=false "docker://$REGISTRY_HOST/$NS/img:zstd-l1" >"$SCRATCH/zstd-l1-manifest.json"
L1=$(json_get "$SCRATCH/zstd-l1-manifest.json" 'j["layers"][-1]["digest"]')
fetch_blob "$NS/img" "$L1" "$SCRATCH/layer-l1.zst" || fail "cannot fetch the level 1 layer"
check "--level 1 is a different zstd stream of the same tar" eval \
    '[[ $L1 != "$LAYER" && "sha256:$(zstd -q -dc "$SCRATCH/layer-l1.zst" | sha256sum | cut -d" " -f1)" == "$DIFF_ID" ]]'

# ---------------------------------------------------------------------------------------------------------------
step "Docker schema2 base: the zstd image is written as OCI"
run_nbsnap "$SCRATCH/docker" save "${COMMON[@]}" --base-image nbsnap-test/base-docker:v1 --name from-docker --tag zstd --compression zstd
[[ $NBSNAP_RC -eq 0 ]] || fail "nbsnap save --compression zstd on a Docker schema2 base exited $NBSNAP_RC"
check "save notes the conversion to OCI" grep -q 'Docker schema2 image, which cannot carry zstd layers' "$SCRATCH/docker.err"
skopeo inspect --raw --tls-verify=false "docker://$REGISTRY_HOST/nbsnap-test/base-docker:v1" >"$SCRATCH/base-docker-manifest.json"
skopeo inspect --raw --tls-verify=false "docker://$REGISTRY_HOST/$NS/from-docker:zstd" >"$SCRATCH/docker-manifest.json"
check "Docker base -> OCI manifest, OCI config type, base layers same digests/sizes with OCI gzip type, zstd layer" "$PYTHON" -c '
import json, sys
b = json.load(open(sys.argv[1])); n = json.load(open(sys.argv[2]))
errs = []
if b["mediaType"] != "application/vnd.docker.distribution.manifest.v2+json": errs.append("base is not schema2")
if n["mediaType"] != "application/vnd.oci.image.manifest.v1+json": errs.append("manifest %s" % n["mediaType"])
if n["config"]["mediaType"] != "application/vnd.oci.image.config.v1+json": errs.append("config %s" % n["config"]["mediaType"])
bl, nl = b["layers"], n["layers"]
if len(nl) != len(bl) + 1: errs.append("layer count")
for x, y in zip(bl, nl):
    if (x["digest"], x["size"]) != (y["digest"], y["size"]) or y["mediaType"] != "application/vnd.oci.image.layer.v1.tar+gzip":
        errs.append("base layer %s -> %s" % (x, y))
if nl[-1]["mediaType"] != "application/vnd.oci.image.layer.v1.tar+zstd": errs.append("new layer %s" % nl[-1]["mediaType"])
print("\n".join(errs)); sys.exit(1 if errs else 0)' "$SCRATCH/base-docker-manifest.json" "$SCRATCH/docker-manifest.json"
check "skopeo copy of the converted image to an oci: layout works" \
    skopeo copy --quiet --src-tls-verify=false "docker://$REGISTRY_HOST/$NS/from-docker:zstd" "oci:$SCRATCH/pd/oci:img"
if skopeo copy --quiet --src-tls-verify=false --dest-compress-format gzip \
    "docker://$REGISTRY_HOST/$NS/from-docker:zstd" "oci:$SCRATCH/pdg/oci:img" 2>/dev/null &&
    umoci unpack --image "$SCRATCH/pdg/oci:img" "$SCRATCH/pdg/bundle" >/dev/null 2>&1; then
    "$PYTHON" "$LIB/treecmp.py" "${TREECMP_IGNORE[@]}" "$M" "$SCRATCH/pdg/bundle/rootfs" \
        >"$SCRATCH/treecmp-docker.txt" 2>&1 || true
    check "converted image unpacks to the notebook's tree (treecmp)" grep -q ' 0 difference(s)' "$SCRATCH/treecmp-docker.txt"
else
    soft_fail "skopeo + umoci could not unpack the converted image"
fi

# ---------------------------------------------------------------------------------------------------------------
step "nbsnapd with compression = zstd saves a zstd layer"
if [[ -n ${NBSNAPD:-} && -x ${NBSNAPD:-} ]]; then
    printf '[nbsnapd]\ncompression = zstd\n' >"$SCRATCH/zstd.conf"
    DSOCK=$SCRATCH/dz.sock
    "$NBSNAPD" --config "$SCRATCH/zstd.conf" --listen "unix:$DSOCK" --root "$M" --state-dir "$STATE" \
        --registry "$REGISTRY_URL" --base-image nbsnap-test/base:v1 --project-id p --notebook-id n \
        --namespace "$NS" >"$SCRATCH/dz.log" 2>&1 &
    DZ_PID=$!
    at_exit "kill -9 $DZ_PID 2>/dev/null || true"
    for _ in $(seq 100); do curl -sf -o /dev/null --unix-socket "$DSOCK" http://localhost/health && break; sleep 0.1; done
    curl -sf --unix-socket "$DSOCK" -H 'Content-Type: application/json' \
        -d '{"name": "daemon", "tag": "zstd"}' http://localhost/v1/p/notebooks/n/create-image >"$SCRATCH/dz.json" ||
        fail "create-image through nbsnapd failed: $(cat "$SCRATCH/dz.log")"
    DZ_ID=$(json_get "$SCRATCH/dz.json" 'j["id"]')
    for _ in $(seq 600); do
        curl -sf --unix-socket "$DSOCK" "http://localhost/v1/p/images/$DZ_ID" >"$SCRATCH/dz-status.json" || true
        [[ $(json_get "$SCRATCH/dz-status.json" 'j.get("status")' 2>/dev/null) == @(ACTIVE|CREATE_FAILED|ERROR) ]] && break
        sleep 0.1
    done
    check "the daemon's save is ACTIVE" eval '[[ $(json_get "$SCRATCH/dz-status.json" "j[\"status\"]") == ACTIVE ]]'
    skopeo inspect --raw --tls-verify=false "docker://$REGISTRY_HOST/$NS/daemon:zstd" >"$SCRATCH/dz-manifest.json" || true
    check "its new layer is $ZSTD_TYPE" eval \
        '[[ $(json_get "$SCRATCH/dz-manifest.json" "j[\"layers\"][-1][\"mediaType\"]") == "$ZSTD_TYPE" ]]'
    kill "$DZ_PID" 2>/dev/null || true
    wait "$DZ_PID" 2>/dev/null || true
else
    note "NBSNAPD not set: the daemon's compression key is not tried"
fi

step "summary"
note "zstd layer $LAYER ($LAYER_SIZE bytes), gzip layer $GZ_LAYER ($GZ_SIZE bytes); scratch $SCRATCH"
finish_checks
