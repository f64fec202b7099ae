#!/bin/bash
# shellcheck disable=SC2016 # check "..." eval '...' assertions expand when they run
# nbsnap diff (issue #10, the preview of a save) on a real overlayfs notebook: a known change set (files and a
# hard link added, a base file edited, a chmod, a base file and a base directory deleted, a symlink, an
# excluded cache, a file in the work volume) gives exactly the A/C/D lines and the summary expected, in the
# order the save writes them, and --json the same as one JSON document. The state dir is unchanged after
# every run (checksums, sizes, mtimes, no file added). After an incremental save the preview compares with
# that save's record, and what it lists is exactly what the next incremental save packs (the top layer's
# entries and whiteouts); --full compares with the container-start baseline. Bad options exit 2.
#
# Run: ctest -R integration/save-diff   (or: sudo NBSNAP=build/agent/nbsnap bash tests/integration/save-diff.sh)
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
need_cmd umoci skopeo curl setfattr setcap timeout script "$PYTHON"
need_nbsnap
scratch_init nbdiff

NS=nbsnap-diff
MiB=$((1024 * 1024))

step "registry, base image, notebook, baseline"
registry_start "$SCRATCH/registry"
base_image_build "$SCRATCH/base" nbsnap-test/base:v1
notebook_mount "$SCRATCH/nb" "$BASE_ROOTFS"
M=$NB_MERGED
STATE=$SCRATCH/state
run_nbsnap "$SCRATCH/baseline" baseline --root "$M" --state-dir "$STATE"
[[ $NBSNAP_RC -eq 0 ]] || fail "nbsnap baseline exited $NBSNAP_RC"

# Everything the state dir holds, with sizes, modes, mtimes and contents: a diff must leave it as it is.
state_sig() {
    (cd "$STATE" && find . -printf '%p %y %s %m %T@\n' | sort && find . -type f -print0 | sort -z | xargs -0r sha256sum)
}
state_sig >"$SCRATCH/state.0"
state_same() {
    state_sig >"$SCRATCH/state.now"
    diff -u "$SCRATCH/state.0" "$SCRATCH/state.now" >&2
}

# diff_run NAME ARGS...: nbsnap diff --root --state-dir ARGS; stdout NAME.out, stderr NAME.err
diff_run() {
    local name=$1
    shift
    run_nbsnap "$SCRATCH/$name" diff --root "$M" --state-dir "$STATE" "$@"
}

# same_text NAME: NAME.out is exactly NAME.want
same_text() {
    diff -u "$SCRATCH/$1.want" "$SCRATCH/$1.out" >&2
}

step "nothing changed: no entry, an empty summary"
diff_run empty
check "exit 0" eval '[[ $NBSNAP_RC -eq 0 ]]'
cat >"$SCRATCH/empty.want" <<'EOF'
0 entries: 0 added, 0 changed, 0 deleted
0 bytes (0 B) of file content to pack, in 0 files
EOF
check "the output is the empty summary" same_text empty
check "stderr names the container-start baseline" \
    grep -qF "nbsnap diff: compared with the container-start baseline ($STATE/baseline): what a full save packs" "$SCRATCH/empty.err"
check "the state dir is unchanged" state_same

step "a known change set"
mkdir -p "$M/opt/t/new" "$M/opt/t/cache"
head -c $((3 * MiB)) /dev/urandom >"$M/opt/t/new/big.bin"
printf 'hello\n' >"$M/opt/t/new/small.txt"
ln "$M/opt/t/new/small.txt" "$M/opt/t/new/small-link.txt"
ln -s new/small.txt "$M/opt/t/link"
head -c $MiB /dev/urandom >"$M/opt/t/cache/junk.bin"   # --exclude /opt/t/cache
printf 'changed motd\n' >"$M/etc/motd"                  # 13 bytes
rm "$M/etc/hostname"
rm -r "$M/usr/lib/python3.11/pkg03"
chmod 0600 "$M/home/ma-user/.profile"
echo 'not in any image' >"$M/home/ma-user/work/scratch.txt" # the work volume (a mount)

diff_run changes --exclude /opt/t/cache
check "exit 0" eval '[[ $NBSNAP_RC -eq 0 ]]'
# Tree order, as the save writes them; a directory whose content changed is itself changed (mtime, ctime), and
# so are its ancestors that overlayfs copied up (ctime); a chmod packs the file whole again; D only for the
# top-most deleted path; the excluded cache and the work volume are left out. Bytes: the hard-linked file
# once (3 MiB + 6 + 13 + 12).
cat >"$SCRATCH/changes.want" <<'EOF'
C /etc
D /etc/hostname
C /etc/motd
C /home/ma-user
C /home/ma-user/.profile
C /opt
C /opt/t
A /opt/t/link
A /opt/t/new
A /opt/t/new/big.bin
A /opt/t/new/small-link.txt
A /opt/t/new/small.txt
C /usr
C /usr/lib
C /usr/lib/python3.11
D /usr/lib/python3.11/pkg03
16 entries: 5 added, 9 changed, 2 deleted
3145759 bytes (3.0 MiB) of file content to pack, in 4 files
largest directories:
  3145734 (3.0 MiB) /opt/t/new
  13 (13 B) /etc
  12 (12 B) /home/ma-user
EOF
check "the A/C/D lines and the summary are exactly the expected ones" same_text changes
check "the state dir is unchanged" state_same

diff_run changes-json --exclude /opt/t/cache --json
check "--json: exit 0" eval '[[ $NBSNAP_RC -eq 0 ]]'
check "--json: the same entries, kinds, types and sizes, and the summary" "$PYTHON" - "$SCRATCH/changes-json.out" "$STATE" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
want_entries = [
    ("C", "/etc", "directory", 0), ("D", "/etc/hostname", "file", 0), ("C", "/etc/motd", "file", 13),
    ("C", "/home/ma-user", "directory", 0), ("C", "/home/ma-user/.profile", "file", 12),
    ("C", "/opt", "directory", 0), ("C", "/opt/t", "directory", 0), ("A", "/opt/t/link", "symlink", 0), ("A", "/opt/t/new", "directory", 0),
    ("A", "/opt/t/new/big.bin", "file", 3 << 20), ("A", "/opt/t/new/small-link.txt", "file", 6),
    ("A", "/opt/t/new/small.txt", "file", 6), ("C", "/usr", "directory", 0), ("C", "/usr/lib", "directory", 0),
    ("C", "/usr/lib/python3.11", "directory", 0), ("D", "/usr/lib/python3.11/pkg03", "directory", 0),
]
want = {
    "base": {"kind": "baseline", "path": sys.argv[2] + "/baseline"},
    "entries": [{"kind": k, "path": p, "type": t, "size": s} for k, p, t, s in want_entries],
    "summary": {"entries": 16, "added": 5, "changed": 9, "deleted": 2, "bytes": 3145759, "files": 4,
                "largest_directories": [{"path": "/opt/t/new", "bytes": 3145734}, {"path": "/etc", "bytes": 13},
                                        {"path": "/home/ma-user", "bytes": 12}]},
}
if j != want:
    for k in want:
        if j.get(k) != want[k]:
            print("  %s: got %s\n  want %s" % (k, json.dumps(j.get(k)), json.dumps(want[k])))
    sys.exit(1)
if list(j) != ["base", "entries", "summary"]:
    print("  keys in the order", list(j))
    sys.exit(1)
EOF
check "--json: the state dir is unchanged" state_same

step "bad options exit 2, say why and change nothing"
bad() {
    local name=$1 want=$2
    shift 2
    run_nbsnap "$SCRATCH/bad-$name" diff "$@"
    check "$name: exit 2" eval '[[ $NBSNAP_RC -eq 2 ]]'
    check "$name: stderr says '$want'" grep -qF -- "$want" "$SCRATCH/bad-$name.err"
    check "$name: nothing on stdout" eval '[[ ! -s $SCRATCH/bad-$name.out ]]'
}
bad no-root "--root and --state-dir are required" --state-dir "$STATE"
bad no-state "--root and --state-dir are required" --root "$M"
bad relative-exclude "--exclude: exclude path 'opt/t/cache' must be absolute" --root "$M" --state-dir "$STATE" --exclude opt/t/cache
bad dotdot-exclude "--exclude:" --root "$M" --state-dir "$STATE" --exclude /opt/../etc
bad unknown-option "Try 'nbsnap diff --help'." --root "$M" --state-dir "$STATE" --bogus
bad extra-argument "unexpected argument 'extra'" --root "$M" --state-dir "$STATE" extra
run_nbsnap "$SCRATCH/bad-root" diff --root "$SCRATCH/no-such-dir" --state-dir "$STATE"
check "a root that does not exist: exit 1, said" eval '[[ $NBSNAP_RC -eq 1 ]] && grep -qF "is not a directory" "$SCRATCH/bad-root.err"'
run_nbsnap "$SCRATCH/bad-state" diff --root "$M" --state-dir "$SCRATCH/no-such-state"
check "a state dir that does not exist: exit 1, not created" eval '[[ $NBSNAP_RC -eq 1 && ! -e $SCRATCH/no-such-state ]]'
check "the state dir is unchanged after the bad options" state_same

step "after an incremental save: the preview shows what the next incremental save packs"
sleep 0.2 # a file changed within 100 ms of a save is read again by the next one (snapshot.h)
run_nbsnap "$SCRATCH/save1" save --root "$M" --state-dir "$STATE" --registry "$REGISTRY_URL" \
    --base-image nbsnap-test/base:v1 --namespace "$NS" --name nb --tag v1 --incremental --exclude /opt/t/cache
[[ $NBSNAP_RC -eq 0 ]] || fail "nbsnap save v1 exited $NBSNAP_RC"
LAST=$(json_get "$STATE/last-save.json" 'j["manifest_digest"]')
RECORD=$STATE/$(json_get "$STATE/last-save.json" 'j["record"]')
state_sig >"$SCRATCH/state.0"

diff_run after-save --exclude /opt/t/cache
printf '0 entries: 0 added, 0 changed, 0 deleted\n0 bytes (0 B) of file content to pack, in 0 files\n' >"$SCRATCH/after-save.want"
check "right after the save: nothing to pack" same_text after-save
check "stderr names the last save's record" \
    grep -qF "nbsnap diff: compared with the record of the last save ($LAST, $RECORD): what an incremental save packs" "$SCRATCH/after-save.err"

diff_run other-excludes
check "other excludes than the last save's: the container-start baseline, and why" \
    grep -qF "compared with the container-start baseline ($STATE/baseline): what a full save packs; not the last save: the excluded paths (or the mount points) differ from the last save's" "$SCRATCH/other-excludes.err"
check "  ... which lists the excluded cache this time" grep -qxF "A /opt/t/cache/junk.bin" "$SCRATCH/other-excludes.out"

printf 'changed again\n' >"$M/etc/motd"
printf 'more\n' >"$M/opt/t/new/more.txt"
rm "$M/opt/t/link"
diff_run second --exclude /opt/t/cache
cat >"$SCRATCH/second.want" <<'EOF'
C /etc/motd
C /opt/t
D /opt/t/link
C /opt/t/new
A /opt/t/new/more.txt
5 entries: 1 added, 3 changed, 1 deleted
19 bytes (19 B) of file content to pack, in 2 files
largest directories:
  14 (14 B) /etc
  5 (5 B) /opt/t/new
EOF
check "the changes since the last save, exactly" same_text second
diff_run second-json --exclude /opt/t/cache --json
check "--json names the last save as the base" eval '[[ $(json_get "$SCRATCH/second-json.out" "j[\"base\"]") == "{\"kind\": \"last-save\", \"path\": \"$RECORD\", \"manifest_digest\": \"$LAST\"}" ]]'
printf '[nbsnapd]\nroot = %s\nstate_dir = %s\nexclude = /opt/t/cache\n' "$M" "$STATE" >"$SCRATCH/nbsnapd.conf"
run_nbsnap "$SCRATCH/second-config" diff --config "$SCRATCH/nbsnapd.conf"
check "--config: root, state_dir and exclude= from nbsnapd's config, the same preview" \
    eval 'cmp -s "$SCRATCH/second.want" "$SCRATCH/second-config.out" && grep -qF "compared with the record of the last save ($LAST" "$SCRATCH/second-config.err"'
printf 'incremental = false\n' >>"$SCRATCH/nbsnapd.conf"
run_nbsnap "$SCRATCH/second-config-full" diff --config "$SCRATCH/nbsnapd.conf"
check "--config with incremental = false: the container-start baseline, and why" \
    grep -qF "not the last save: the config says incremental = false" "$SCRATCH/second-config-full.err"
printf '[nbsnapd]\nroot = %s\nstate_dir = %s\nexclude = /opt/t/cache\nmax_layers = %s\n' "$M" "$STATE" \
    "$(json_get "$STATE/last-save.json" 'j["layers"]')" >"$SCRATCH/nbsnapd-layers.conf"
run_nbsnap "$SCRATCH/second-config-layers" diff --config "$SCRATCH/nbsnapd-layers.conf"
check "--config whose max_layers leaves no room for one more layer: the container-start baseline, and why" \
    grep -qF "one more would exceed" "$SCRATCH/second-config-layers.err"
diff_run second-full --exclude /opt/t/cache --full
check "--full compares with the container-start baseline" eval 'grep -qF "compared with the container-start baseline" "$SCRATCH/second-full.err" && grep -qxF "A /opt/t/new/big.bin" "$SCRATCH/second-full.out" && grep -qxF "D /etc/hostname" "$SCRATCH/second-full.out"'
check "the state dir is unchanged after the previews" state_same

sleep 0.2
# on a terminal (script(1)): the progress line shows the percent, MB packed, MB/s and ETA
RC=0
script -qfec "$(printf '%q ' "$NBSNAP" save --root "$M" --state-dir "$STATE" --registry "$REGISTRY_URL" \
    --base-image nbsnap-test/base:v1 --namespace "$NS" --name nb --tag v2 --incremental --exclude /opt/t/cache)" \
    /dev/null >"$SCRATCH/save2.tty" 2>&1 || RC=$?
[[ $RC -eq 0 ]] || { tail -c 2000 "$SCRATCH/save2.tty" >&2; fail "nbsnap save v2 exited $RC"; }
check "nbsnap save's terminal line: phase, percent, MB packed, MB/s, ETA" \
    grep -Eq 'packing and uploading layer +[0-9]+% +[0-9.]+ of [0-9.]+ MB +(-|[0-9.]+) MB/s ETA (-|[0-9]+s)' "$SCRATCH/save2.tty"
check "nbsnap save's plain lines (not a terminal) show the percent too" \
    grep -Eq '^nbsnap: packing and uploading layer: [0-9]+%, [0-9.]+ of [0-9.]+ MB packed, (-|[0-9.]+) MB/s, ETA (-|[0-9]+s)' "$SCRATCH/save1.err"
curl -sSf -H 'Accept: application/vnd.oci.image.manifest.v1+json' -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    "$REGISTRY_URL/v2/$NS/nb/manifests/v2" >"$SCRATCH/v2.manifest" || fail "GET manifest $NS/nb:v2"
TOP=$(json_get "$SCRATCH/v2.manifest" 'j["layers"][-1]["digest"]')
fetch_blob "$NS/nb" "$TOP" "$SCRATCH/v2.top.tgz" || fail "cannot fetch the top layer"
layer_list "$SCRATCH/v2.top.tgz" "$SCRATCH/v2.top.list"
# the layer's entries as diff lines: whiteouts are D of the path they delete, the rest A or C
check "the incremental save packed exactly the paths the preview listed" "$PYTHON" - "$SCRATCH/v2.top.list" "$SCRATCH/second.out" <<'EOF'
import sys
layer = []
for line in open(sys.argv[1]):
    kind, name = line.split("\t")[:2]
    if kind == "w":
        d, _, base = name.rpartition("/")
        layer.append("D /" + (d + "/" if d else "") + base[len(".wh."):])
    else:
        layer.append("/" + name)
preview = []
for line in open(sys.argv[2]):
    if line[:2] in ("A ", "C "):
        preview.append(line[2:].rstrip("\n"))
    elif line.startswith("D "):
        preview.append(line.rstrip("\n"))
if sorted(layer) != sorted(preview):
    print("  layer:   %s\n  preview: %s" % (sorted(layer), sorted(preview)))
    sys.exit(1)
EOF

step "--config: the agent's secrets inside the root are left out, as nbsnapd's saves leave them out"
state_sig >"$SCRATCH/state.0"
echo 'not to be saved' >"$M/opt/t/secret-token"
printf '[nbsnapd]\nroot = %s\nstate_dir = %s\nexclude = /opt/t/cache\ntoken_file = %s\n' "$M" "$STATE" "$M/opt/t/secret-token" >"$SCRATCH/nbsnapd-token.conf"
run_nbsnap "$SCRATCH/token-config" diff --config "$SCRATCH/nbsnapd-token.conf"
check "the token file is not listed with --config" eval '[[ $NBSNAP_RC -eq 0 ]] && ! grep -q secret-token "$SCRATCH/token-config.out"'
check "  ... and other excludes than the last save's mean the container-start baseline" \
    grep -qF "not the last save: the excluded paths (or the mount points) differ from the last save's" "$SCRATCH/token-config.err"
diff_run token-plain --exclude /opt/t/cache
check "without --config the token file is a change like any other" grep -qxF "A /opt/t/secret-token" "$SCRATCH/token-plain.out"
bad bad-config "nbsnap diff: --config:" --config "$SCRATCH/no-such.conf"
printf '[nbsnapd]\nno_such_key = 1\n' >"$SCRATCH/bad.conf"
bad bad-config-key "nbsnap diff: --config:" --config "$SCRATCH/bad.conf"
check "the state dir is unchanged after the previews" state_same

finish_checks
