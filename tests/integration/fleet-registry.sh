#!/bin/bash
# The replicated registry of tests/lib/fleet-registry.sh (issue #12, part 1), proved with real clients: three
# docker-registry replicas sharing one storage and one http.secret behind nginx with a 20 r/s limit.
#   - skopeo pushes an image through the balancer and pulls it back; the requests are spread over the replicas;
#   - one upload session goes over all three replicas directly (POST on A, PATCH on B, PUT on C): the shared
#     http.secret lets B and C accept the _state that A signed; a registry with another secret refuses it;
#   - a burst of requests gets 429 with Retry-After: 1 and the JSON error body;
#   - with one replica SIGKILLed, requests through nginx still succeed (nginx passes them to the next replica)
#     and skopeo pulls the image; the replica restarts on its port and gets requests again;
#   - one `nbsnap save` through the balancer: ACTIVE, skopeo inspect shows the base layers plus one, no base layer
#     uploaded, no upload session left open.
#
# Run: ctest -R integration/fleet-registry   (or: sudo NBSNAP=build/agent/nbsnap bash tests/integration/fleet-registry.sh)
# Env: NBSNAP (binary), NBSNAP_TEST_KEEP=1 keeps the scratch dir, NBSNAP_TIMEOUT (seconds per nbsnap run).
set -euo pipefail
LIB=$(cd "$(dirname "${BASH_SOURCE[0]}")/../lib" && pwd)
# shellcheck source=tests/lib/common.sh
source "$LIB/common.sh"
# shellcheck source=tests/lib/fleet-registry.sh
source "$LIB/fleet-registry.sh"
# shellcheck source=tests/lib/base-image.sh
source "$LIB/base-image.sh"
# shellcheck source=tests/lib/notebook.sh
source "$LIB/notebook.sh"

need_root
need_cmd nginx docker-registry umoci skopeo curl setfattr getfattr setcap sha256sum timeout "$PYTHON"
need_nbsnap
scratch_init nbfleet

RATE=20
BURST=40
MiB=$((1024 * 1024))

step "three replicas behind nginx ($RATE r/s, burst $BURST)"
fleet_registry_start "$SCRATCH/fleet" 3 --rate "$RATE" --burst "$BURST"
[[ ${#FLEET_REPLICA_PIDS[@]} -eq 3 ]] || fail "expected 3 replica pids, got: ${FLEET_REPLICA_PIDS[*]}"
# the helpers of common.sh and base-image.sh (pull_image, base_image_push, manifest_status) talk to REGISTRY_*:
# point them at the balancer
export REGISTRY_HOST=$FLEET_HOST REGISTRY_URL=$FLEET_URL

# header_value FILE NAME: the value of the last NAME: header in the curl -D dump FILE (CR removed)
header_value() {
    N=$2 awk 'BEGIN { IGNORECASE = 1 } { sub(/\r$/, "") } tolower($0) ~ "^" tolower(ENVIRON["N"]) ":" { v = $0; sub(/^[^:]*:[ \t]*/, "", v) } END { print v }' "$1"
}
# status_of FILE: the status code of the last response in the curl -D dump FILE
status_of() { awk '/^HTTP\// { s = $2 } END { print s }' "$1"; }
# path_of URL: the path and query of an absolute URL (a Location of a replica names that replica)
path_of() { local u=${1#*://}; printf '/%s' "${u#*/}"; }

# ---------------------------------------------------------------------------------------------------------------
step "skopeo push through the balancer, pull back"
MARK0=$(fleet_log_mark)
base_image_build "$SCRATCH/base" nbsnap-test/base:v1 || fail "building/pushing the base image through $FLEET_HOST failed"
check "skopeo inspect through the balancer" skopeo inspect --tls-verify=false "docker://$FLEET_HOST/nbsnap-test/base:v1" >"$SCRATCH/base-inspect.json"
pull_image nbsnap-test/base:v1 "$SCRATCH/pull1" || fail "skopeo copy + umoci unpack of the pushed image failed"
check "the pulled image unpacks to the base tree (/opt/t/modify.txt)" cmp "$SCRATCH/pull1/bundle/rootfs/opt/t/modify.txt" "$BASE_ROOTFS/opt/t/modify.txt"
used_replicas() { fleet_log_since "$1" | awk -F'\t' '$8 != "-" { n = split($8, a, ", "); for (i = 1; i <= n; i++) print a[i] }' | sort -u; }
used_replicas "$MARK0" >"$SCRATCH/used0"
note "replicas that served the push and pull: $(tr '\n' ' ' <"$SCRATCH/used0")"
check "round robin: all three replicas served requests of the push and pull" test "$(wc -l <"$SCRATCH/used0")" -eq 3
check "push and pull through nginx: no 5xx in the access log" test "$(fleet_log_since "$MARK0" | awk -F'\t' '$2 >= 500' | wc -l)" -eq 0

# ---------------------------------------------------------------------------------------------------------------
step "one upload session over three replicas: POST on 0, PATCH on 1, PUT on 2"
head -c $((3 * MiB + 12345)) /dev/urandom >"$SCRATCH/blob.bin"
BLOB_DIGEST="sha256:$(sha256sum <"$SCRATCH/blob.bin" | cut -d' ' -f1)"
head -c $((2 * MiB)) "$SCRATCH/blob.bin" >"$SCRATCH/part1"
tail -c +$((2 * MiB + 1)) "$SCRATCH/blob.bin" >"$SCRATCH/part2"
R0=${FLEET_REPLICA_URLS[0]} R1=${FLEET_REPLICA_URLS[1]} R2=${FLEET_REPLICA_URLS[2]}
curl -s -o /dev/null -D "$SCRATCH/post.h" -X POST -H 'Content-Length: 0' "$R0/v2/fleet-test/chunked/blobs/uploads/"
[[ $(status_of "$SCRATCH/post.h") == 202 ]] || fail "POST on replica 0: $(status_of "$SCRATCH/post.h") (expected 202)"
LOC=$(header_value "$SCRATCH/post.h" Location)
note "replica 0 opened $LOC"
[[ $LOC == "$R0/"* ]] || soft_fail "the Location of replica 0 does not name replica 0 (Host is $R0): $LOC"
curl -s -o "$SCRATCH/patch.body" -D "$SCRATCH/patch.h" -X PATCH -H 'Content-Type: application/octet-stream' \
    -H "Content-Range: 0-$((2 * MiB - 1))" --data-binary @"$SCRATCH/part1" "$R1$(path_of "$LOC")"
check "PATCH of the first 2 MiB on replica 1 is accepted (202)" test "$(status_of "$SCRATCH/patch.h")" = 202
check "replica 1 reports the range written (Range: 0-$((2 * MiB - 1)))" test "$(header_value "$SCRATCH/patch.h" Range)" = "0-$((2 * MiB - 1))"
LOC=$(header_value "$SCRATCH/patch.h" Location)
[[ -n $LOC ]] || fail "PATCH on replica 1 answered $(status_of "$SCRATCH/patch.h") without a Location: $(head -c 500 "$SCRATCH/patch.body")"
# a registry on the same storage with ANOTHER secret cannot read the _state: the shared secret is what makes it work
OTHER_PORT=$(free_port)
mkdir -p "$SCRATCH/other"
registry_write_config "$SCRATCH/other/config.yml" "127.0.0.1:$OTHER_PORT" "$FLEET_STORAGE" "not-the-fleet-secret"
registry_spawn "$SCRATCH/other/config.yml" "$SCRATCH/other/registry.log"
OTHER_PID=$REGISTRY_SPAWNED_PID
at_exit "_fleet_kill_wait $OTHER_PID TERM"
if registry_wait_up "http://127.0.0.1:$OTHER_PORT" "$OTHER_PID"; then
    OTHER_STATUS=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$OTHER_PORT$(path_of "$LOC")")
    check "a registry with another http.secret refuses the session's _state (GET: $OTHER_STATUS, not 204)" test "$OTHER_STATUS" != 204
else
    soft_fail "the registry with another secret did not start (see $SCRATCH/other/registry.log)"
fi
_fleet_kill_wait "$OTHER_PID" TERM
curl -s -o "$SCRATCH/put.body" -D "$SCRATCH/put.h" -X PUT -H 'Content-Type: application/octet-stream' \
    --data-binary @"$SCRATCH/part2" "$R2$(path_of "$LOC")&digest=$BLOB_DIGEST"
check "PUT ?digest= with the rest on replica 2 commits the blob (201)" test "$(status_of "$SCRATCH/put.h")" = 201
[[ $(status_of "$SCRATCH/put.h") == 201 ]] || note "PUT answer: $(head -c 500 "$SCRATCH/put.body")"
for url in "$FLEET_URL" "$R0" "$R1" "$R2"; do
    got=$(curl -sf "$url/v2/fleet-test/chunked/blobs/$BLOB_DIGEST" | sha256sum | cut -d' ' -f1)
    check "GET the blob from $url gives its bytes back" test "sha256:$got" = "$BLOB_DIGEST"
done
check "no upload session left open in the storage" test "$(fleet_uploads_left)" -eq 0

# ---------------------------------------------------------------------------------------------------------------
step "a burst gets 429 with Retry-After: 1"
sleep 2.5 # the bucket refills ($BURST at $RATE/s)
MARK1=$(fleet_log_mark)
BURST_PIDS=()
for ((i = 0; i < 120; i++)); do
    curl -s -o /dev/null -w '%{http_code}\n' "$FLEET_URL/v2/" >>"$SCRATCH/burst.codes" &
    BURST_PIDS+=($!)
done
wait "${BURST_PIDS[@]}" # not a bare wait: the replicas and nginx are children of this shell too
N200=$(grep -c '^200$' "$SCRATCH/burst.codes" || true)
N429=$(grep -c '^429$' "$SCRATCH/burst.codes" || true)
note "burst of 120: $N200 x 200, $N429 x 429, others: $(grep -cv '^\(200\|429\)$' "$SCRATCH/burst.codes" || true)"
check "the burst had answers 200 (within the burst)" test "$N200" -ge 1
check "the burst had answers 429" test "$N429" -ge 1
check "the burst had only 200 and 429" test "$((N200 + N429))" -eq 120
check "fleet_count_429 counts the 429s of the burst ($N429)" test "$(fleet_count_429 "$MARK1")" -eq "$N429"
for ((i = 0; i < 50; i++)); do # the bucket is empty: the next request is a 429 (until it refills)
    curl -s -o "$SCRATCH/429.body" -D "$SCRATCH/429.h" -H 'Accept: application/json' "$FLEET_URL/v2/nbsnap-test/base/manifests/v1"
    [[ $(status_of "$SCRATCH/429.h") == 429 ]] && break
done
check "a limited request is answered 429" test "$(status_of "$SCRATCH/429.h")" = 429
check "the 429 carries Retry-After: 1" test "$(header_value "$SCRATCH/429.h" Retry-After)" = 1
check "the 429 body is a registry error TOOMANYREQUESTS" json_get "$SCRATCH/429.body" 'j["errors"][0]["code"] == "TOOMANYREQUESTS" or sys.exit(1)'
check "nginx answered the 429s itself (no upstream)" test "$(fleet_log_since "$MARK1" | awk -F'\t' '$2 == 429 && $8 != "-"' | wc -l)" -eq 0

# ---------------------------------------------------------------------------------------------------------------
step "replica 1 killed (SIGKILL): requests through nginx still succeed"
sleep 2.5
DEAD=127.0.0.1:${FLEET_REPLICA_PORTS[1]}
fleet_replica_kill 1
check "replica 1 is down" test "$(curl -s -o /dev/null -w '%{http_code}' "$R1/v2/")" = 000
MARK2=$(fleet_log_mark)
: >"$SCRATCH/down.codes"
for ((i = 0; i < 30; i++)); do # 10 r/s: under the limit
    curl -s -o /dev/null -w '%{http_code}\n' -I -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
        "$FLEET_URL/v2/nbsnap-test/base/manifests/v1" >>"$SCRATCH/down.codes"
    sleep 0.1
done
check "30 manifest HEADs through nginx with a replica down: all 200 ($(sort "$SCRATCH/down.codes" | uniq -c | tr -s ' \n' ' '))" \
    test "$(grep -c '^200$' "$SCRATCH/down.codes" || true)" -eq 30
check "the access log shows nginx passing requests on from the dead replica $DEAD" \
    test "$(fleet_log_since "$MARK2" | awk -F'\t' -v d="$DEAD" 'index($8, d ", ") == 1 && $2 == 200' | wc -l)" -ge 1
pull_image nbsnap-test/base:v1 "$SCRATCH/pull2" || soft_fail "skopeo pull with replica 1 down failed"

step "replica 1 restarted on its port"
fleet_replica_restart 1 || fail "replica 1 did not come back on port ${FLEET_REPLICA_PORTS[1]}"
check "replica 1 answers again on $R1" curl -sf -o /dev/null "$R1/v2/"
sleep 2.5 # fail_timeout: nginx tries it again after 2 s
MARK3=$(fleet_log_mark)
for ((i = 0; i < 12; i++)); do
    curl -s -o /dev/null "$FLEET_URL/v2/"
    sleep 0.1
done
check "nginx sends requests to the restarted replica again" \
    test "$(fleet_log_since "$MARK3" | awk -F'\t' -v d="$DEAD" '$8 == d && $2 == 200' | wc -l)" -ge 1

# ---------------------------------------------------------------------------------------------------------------
step "nbsnap save through the balancer"
sleep 2.5
notebook_mount "$SCRATCH/nb" "$BASE_ROOTFS"
M=$NB_MERGED
STATE=$SCRATCH/state
run_nbsnap "$SCRATCH/baseline" baseline --root "$M" --state-dir "$STATE"
[[ $NBSNAP_RC -eq 0 ]] || fail "nbsnap baseline exited $NBSNAP_RC"
mkdir -p "$M/opt/fleet"
head -c $((2 * MiB)) /dev/urandom >"$M/opt/fleet/random.bin"
for ((i = 0; i < 50; i++)); do echo "small file $i" >"$M/opt/fleet/small-$i.txt"; done
echo 'changed through the fleet' >>"$M/opt/t/modify.txt"
rm "$M/opt/t/delete-file.txt"
MARK4=$(fleet_log_mark)
run_nbsnap "$SCRATCH/save" save --root "$M" --state-dir "$STATE" --registry "$FLEET_URL" \
    --base-image nbsnap-test/base:v1 --namespace fleet --name nb0 --tag v1
[[ $NBSNAP_RC -eq 0 ]] || fail "nbsnap save through $FLEET_URL exited $NBSNAP_RC (stderr: $SCRATCH/save.err)"
check "save prints status ACTIVE" json_get "$SCRATCH/save.out" 'j["status"] == "ACTIVE" or sys.exit(1)'
skopeo inspect --tls-verify=false "docker://$FLEET_HOST/fleet/nb0:v1" >"$SCRATCH/nb0-inspect.json" ||
    fail "skopeo inspect docker://$FLEET_HOST/fleet/nb0:v1 failed"
mapfile -t BASE_DIGESTS < <(json_get "$SCRATCH/base-inspect.json" '"\n".join(j["Layers"])')
mapfile -t NB0_DIGESTS < <(json_get "$SCRATCH/nb0-inspect.json" '"\n".join(j["Layers"])')
check "skopeo inspect: the base's ${#BASE_DIGESTS[@]} layers plus one" test "${#NB0_DIGESTS[@]}" -eq $((${#BASE_DIGESTS[@]} + 1))
check "skopeo inspect: the base layers come first, unchanged" test "${NB0_DIGESTS[*]:0:${#BASE_DIGESTS[@]}}" = "${BASE_DIGESTS[*]}"
fleet_log_since "$MARK4" | awk -F'\t' '($3 == "PUT" || $3 == "POST") && $4 ~ /digest=/ { print $4 }' |
    sed -E 's/%3[Aa]/:/g; s/.*[?&]digest=(sha256:[0-9a-f]{64}).*/\1/' | sort -u >"$SCRATCH/save.uploads"
note "blobs committed by the save: $(tr '\n' ' ' <"$SCRATCH/save.uploads")"
check "the save uploaded no base layer" test -z "$(printf '%s\n' "${BASE_DIGESTS[@]}" | grep -Fxf - "$SCRATCH/save.uploads" || true)"
check "the save uploaded its new layer" grep -qFx "${NB0_DIGESTS[-1]}" "$SCRATCH/save.uploads"
note "save: $(fleet_log_since "$MARK4" | wc -l) requests through nginx, $(fleet_count_429 "$MARK4") of them 429"
check "no upload session left open in the storage after the save" test "$(fleet_uploads_left)" -eq 0

finish_checks
