#!/bin/bash
# shellcheck disable=SC2016
# nbsnap installed as a package is:
#  - `cmake --install BUILD --prefix STAGE` and `DESTDIR=DD cmake --install BUILD` write nothing outside STAGE
#    (DD): every path of install_manifest.txt and of the install log is inside, and no file named *nbsnap* in
#    the system's directories (/etc, /usr, /lib, /var/lib) was created or changed (their ctimes, before and
#    after); the layout under the prefix is the one systemd reads (lib/systemd/system, lib/tmpfiles.d,
#    lib/sysusers.d with "g nbsnap -", which systemd-sysusers --root applies), the config at the build's default config path, the man pages in
#    share/man, the bash completion in share/bash-completion/completions;
#  - a tree configured with -DNBSNAP_SYSTEMD_UNITDIR= and friends installs there, and one configured for
#    the prefix /usr puts the config in /etc/nbsnap and compiles that path in (configure only);
#  - the man pages render with man -l and groff -ww without a warning, within 80 columns, and cover every
#    command, option and config key;
#  - the bash completion sources in bash and completes commands, options and values;
#  - --help: examples for every command, nbsnapd's within 80 columns with --chunk-size and NBSNAP_LOG_LEVEL;
#  - nbsnapd whose socket_group does not exist starts, warns naming the group, and refuses a non-root peer
#    (uid 65534, by the socket's mode and, on a socket opened to everyone, by SO_PEERCRED: 403);
#  - the CLI says "nbsnapd is not running on PATH (systemctl start nbsnapd.socket)" when no agent listens.
set -euo pipefail
# shellcheck source=tests/integration/daemon-common.bash
source "$(dirname "${BASH_SOURCE[0]}")/daemon-common.bash"

need_root
need_cmd cmake man groff curl setpriv find "$PYTHON"
need_nbsnap
need_nbsnapd
[[ -n ${NBSNAP_BINARY_DIR:-} && -f $NBSNAP_BINARY_DIR/CMakeCache.txt ]] || { note "SKIP: NBSNAP_BINARY_DIR is not a build dir"; exit 77; }
[[ -n ${NBSNAP_SOURCE_DIR:-} ]] || NBSNAP_SOURCE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
scratch_init nb-install
B=$NBSNAP_BINARY_DIR
PREFIX=$(sed -n 's/^CMAKE_INSTALL_PREFIX:PATH=//p' "$B/CMakeCache.txt")
CONFIG_PATH=$(sed -n 's/^#define NBSNAP_CONFIG_PATH "\(.*\)"$/\1/p' "$B/include/agent/build-paths.h")
[[ -n $CONFIG_PATH ]] || fail "no NBSNAP_CONFIG_PATH in $B/include/agent/build-paths.h"
[[ -f $B/docs/man/nbsnap.1 ]] || fail "the man pages were not built (scdoc missing? scripts/install-deps.sh installs it)"
SYSDIRS=(/etc /usr /lib /var/lib)

# every file or link named *nbsnap* in the system's directories, with its ctime (an install changes it even
# when it keeps the source's mtime); the scratch dir and the build trees are left out
system_files() {
    find "${SYSDIRS[@]}" -xdev \( -path "$SCRATCH" -o -path "$B" -o -path "$NBSNAP_SOURCE_DIR" \) -prune -o \
        -name '*nbsnap*' \( -type f -o -type l \) -printf '%p %C@\n' 2>/dev/null | sort
}

# all_inside DIR LOG [MANIFEST-DIR]: the log's "Installing:" paths all start with DIR/, and the paths of
# install_manifest.txt with MANIFEST-DIR/ (default DIR; with DESTDIR the manifest lists them without it)
all_inside() {
    local dir=$1 log=$2 mdir=${3:-$1} bad
    bad=$(grep -v "^$mdir/" "$B/install_manifest.txt" || true)
    [[ -z $bad ]] || { note "outside $mdir in install_manifest.txt: $bad"; return 1; }
    bad=$(sed -n 's/^-- \(Installing\|Up-to-date\): //p' "$log" | grep -v "^$dir/" || true)
    [[ -z $bad ]] || { note "outside $dir in the install log: $bad"; return 1; }
    [[ $(grep -c . "$B/install_manifest.txt") -ge 13 ]] || { note "the manifest lists too few files"; return 1; }
}

# layout ROOT: what a package has under the prefix ROOT
layout() {
    local r=$1 u
    check "$r: both programs" test -x "$r/bin/nbsnap" -a -x "$r/bin/nbsnapd"
    for u in nbsnapd.service nbsnapd.socket nbsnap-baseline.service; do
        check "$r: lib/systemd/system/$u" test -s "$r/lib/systemd/system/$u"
    done
    check "$r: lib/tmpfiles.d/nbsnap.conf" grep -q '^d /var/lib/nbsnap 0700 root root' "$r/lib/tmpfiles.d/nbsnap.conf"
    check "$r: lib/sysusers.d/nbsnap.conf creates the socket group" grep -qx 'g nbsnap -' "$r/lib/sysusers.d/nbsnap.conf"
    check "$r: man pages" test -s "$r/share/man/man1/nbsnap.1" -a -s "$r/share/man/man8/nbsnapd.8" \
        -a -s "$r/share/man/man5/nbsnapd.conf.5"
    check "$r: bash completion" test -s "$r/share/bash-completion/completions/nbsnap"
}

step "cmake --install --prefix"
before=$(system_files)
STAGE=$SCRATCH/stage
cmake --install "$B" --prefix "$STAGE" >"$SCRATCH/stage.log" 2>&1 || { cat "$SCRATCH/stage.log" >&2; fail "cmake --install --prefix failed"; }
check "every installed path is under $STAGE" all_inside "$STAGE" "$SCRATCH/stage.log"
layout "$STAGE"
check "the config in $STAGE/etc/nbsnap" test -s "$STAGE/etc/nbsnap/nbsnapd.conf"

step "DESTDIR= cmake --install"
DD=$SCRATCH/dd
DESTDIR=$DD cmake --install "$B" >"$SCRATCH/dd.log" 2>&1 || { cat "$SCRATCH/dd.log" >&2; fail "DESTDIR cmake --install failed"; }
check "every installed path is under $DD (the manifest: under $PREFIX)" all_inside "$DD" "$SCRATCH/dd.log" "$PREFIX"
layout "$DD$PREFIX"
check "the config at the default config path ($CONFIG_PATH)" test -s "$DD$CONFIG_PATH"
check "nbsnapd.service passes that config" grep -qx "ExecStart=$PREFIX/bin/nbsnapd --config $CONFIG_PATH" \
    "$DD$PREFIX/lib/systemd/system/nbsnapd.service"
check "nbsnapd --help names that config" bash -c '"$1" --help | grep -qF "$2"' _ "$NBSNAPD" "$CONFIG_PATH"
(cd "$DD" && find . -type f | sort) >"$SCRATCH/dd.files"
(cd "$STAGE" && find . -type f | sort | sed "s|^\.|.$PREFIX|") >"$SCRATCH/stage.files"
check "--prefix and DESTDIR install the same files" diff "$SCRATCH/stage.files" "$SCRATCH/dd.files"
after=$(system_files)
check "no file named *nbsnap* in ${SYSDIRS[*]} was created or changed" test "$before" = "$after"
[[ $before == "$after" ]] || diff <(echo "$before") <(echo "$after") >&2 || true

step "the sysusers.d entry, applied by systemd-sysusers to an empty root"
if command -v systemd-sysusers >/dev/null; then
    R=$SCRATCH/sysroot
    mkdir -p "$R/etc"
    touch "$R/etc/passwd" "$R/etc/group" "$R/etc/shadow" "$R/etc/gshadow"
    systemd-sysusers --root="$R" "$DD$PREFIX/lib/sysusers.d/nbsnap.conf" >"$SCRATCH/sysusers.log" 2>&1 ||
        { cat "$SCRATCH/sysusers.log" >&2; soft_fail "systemd-sysusers --root failed"; }
    check "it creates the system group nbsnap ($(cat "$R/etc/group"))" grep -Eq '^nbsnap:x:[0-9]+:$' "$R/etc/group"
    check "and no user" test ! -s "$R/etc/passwd"
else
    note "no systemd-sysusers: the sysusers.d entry is not applied"
fi

step "configured elsewhere (configure only)"
cmake -S "$NBSNAP_SOURCE_DIR" -B "$SCRATCH/cfg-dirs" -DNBSNAP_SYSTEMD_UNITDIR="$SCRATCH/units" \
    -DNBSNAP_TMPFILESDIR="$SCRATCH/tmpfiles" -DNBSNAP_SYSUSERSDIR="$SCRATCH/sysusers" >"$SCRATCH/cfg-dirs.log" 2>&1 ||
    { cat "$SCRATCH/cfg-dirs.log" >&2; fail "configure with NBSNAP_*DIR failed"; }
for d in units tmpfiles sysusers; do
    check "-DNBSNAP_...=$SCRATCH/$d is where the files go" \
        grep -q "DESTINATION \"$SCRATCH/$d\"" "$SCRATCH/cfg-dirs/units/cmake_install.cmake"
done
cmake -S "$NBSNAP_SOURCE_DIR" -B "$SCRATCH/cfg-usr" -DCMAKE_INSTALL_PREFIX=/usr >"$SCRATCH/cfg-usr.log" 2>&1 ||
    { cat "$SCRATCH/cfg-usr.log" >&2; fail "configure with the prefix /usr failed"; }
check "prefix /usr: nbsnapd's default config is /etc/nbsnap/nbsnapd.conf" \
    grep -qx '#define NBSNAP_CONFIG_PATH "/etc/nbsnap/nbsnapd.conf"' "$SCRATCH/cfg-usr/include/agent/build-paths.h"
check "prefix /usr: the config is installed in /etc/nbsnap" \
    grep -q 'DESTINATION "/etc/nbsnap"' "$SCRATCH/cfg-usr/units/cmake_install.cmake"
check "prefix /usr: the units in /usr/lib/systemd/system" \
    grep -q 'DESTINATION "${CMAKE_INSTALL_PREFIX}/lib/systemd/system"' "$SCRATCH/cfg-usr/units/cmake_install.cmake"
check "prefix /usr: conffiles is /etc/nbsnap/nbsnapd.conf" grep -qx /etc/nbsnap/nbsnapd.conf "$SCRATCH/cfg-usr/units/debian/conffiles"

step "man pages"
MAN=$STAGE/share/man
for page in man1/nbsnap.1 man8/nbsnapd.8 man5/nbsnapd.conf.5; do
    MAN_KEEP_STDERR=1 MANWIDTH=80 man -l -Tutf8 "$MAN/$page" >"$SCRATCH/${page#*/}.txt" 2>"$SCRATCH/${page#*/}.err" || true
    check "$page renders" test -s "$SCRATCH/${page#*/}.txt"
    check "$page: man -l says nothing on stderr ($(head -c 300 "$SCRATCH/${page#*/}.err"))" test ! -s "$SCRATCH/${page#*/}.err"
    groff -ww -z -man "$MAN/$page" >"$SCRATCH/${page#*/}.groff" 2>&1 || true
    check "$page: groff -ww has no warning ($(head -c 300 "$SCRATCH/${page#*/}.groff"))" test ! -s "$SCRATCH/${page#*/}.groff"
    MANWIDTH=80 man -l "$MAN/$page" 2>/dev/null >"$SCRATCH/${page#*/}.ascii" # not a terminal: plain text
    check "$page: within 80 columns" bash -c '! grep -E "^.{81}" "$1"' _ "$SCRATCH/${page#*/}.ascii"
done
T1=$SCRATCH/nbsnap.1.ascii T5=$SCRATCH/nbsnapd.conf.5.ascii T8=$SCRATCH/nbsnapd.8.ascii
for c in baseline save diff create-image status list delete cancel; do
    check "nbsnap(1) has the command $c" grep -Eq "^ +nbsnap .*\b$c\b|^ {7}$c\b" "$T1"
done
for o in --socket --overwrite --exclude --json --limit --offset --wait --status --chunk-size --incremental; do
    check "nbsnap(1) has $o" grep -q -- "$o" "$T1"
done
# every option of nbsnap baseline and save, as their --help lists them
for c in baseline save; do
    for o in $("$NBSNAP" "$c" --help | grep -oE '(^| |\[)--[a-z][a-z-]+' | tr -d ' [' | sort -u); do
        check "nbsnap(1) has $c's $o" grep -q -- "$o\b" "$T1"
    done
done
check "nbsnap(1) names the default config path" grep -qF "$CONFIG_PATH" "$T1"
check "nbsnap(1) has the not-running message" grep -q 'nbsnapd is not running on' "$T1"
# every key nbsnapd takes (its --help lists them as flags), as a key of nbsnapd.conf(5)
keys=$("$NBSNAPD" --help | sed -n 's/^  --\([a-z][a-z-]*\) [A-Za-z].*/\1/p; s/^  --\([a-z][a-z-]*\) [A-Za-z|:]*$/\1/p' |
    grep -vx 'config' | tr - _ | sort -u)
check "nbsnapd --help lists keys" test "$(wc -w <<<"$keys")" -ge 27
for k in $keys allow_overwrite; do
    check "nbsnapd.conf(5) has $k" grep -Eq "(^ +|, )$k = " "$T5"
done
check "nbsnapd(8) has NBSNAP_LOG_LEVEL" grep -q NBSNAP_LOG_LEVEL "$T8"
check "nbsnapd(8) names the default config path" grep -qF "$CONFIG_PATH" "$T8"

step "bash completion"
COMPLETION=$STAGE/share/bash-completion/completions/nbsnap
# complete WORD...: the completions of the last word of the command line "nbsnap WORD..."
complete_words() {
    bash --norc --noprofile -c 'source "$1"; shift; COMP_WORDS=(nbsnap "$@"); COMP_CWORD=$#; '\
'complete -p nbsnap >/dev/null || exit 1; _nbsnap; printf "%s\n" "${COMPREPLY[@]}" | sort | tr "\n" " "' _ "$COMPLETION" "$@"
}
check "it sources and registers _nbsnap" bash --norc -c 'source "$1" && complete -p nbsnap | grep -q "_nbsnap"' _ "$COMPLETION"
got=$(complete_words "")
check "commands ($got)" test "$got" = "baseline cancel create-image delete diff list save status "
got=$(complete_words --socket /run/x.sock st)
check "a command after --socket ($got)" test "$got" = "status "
got=$(complete_words save --ov)
check "save --overwrite ($got)" test "$got" = "--overwrite "
got=$(complete_words create-image --ex)
check "create-image --exclude ($got)" test "$got" = "--exclude "
got=$(complete_words list --)
check "list's options ($got)" test "$got" = "--help --limit --notebook-id --offset --project-id --socket --status "
got=$(complete_words list --status CREA)
check "--status values ($got)" test "$got" = "CREATE_FAILED CREATING "
got=$(complete_words save --compression z)
check "--compression values ($got)" test "$got" = "zstd "
got=$(complete_words diff --)
check "diff's options ($got)" test "$got" = "--authfile --config --exclude --full --help --json --root --state-dir "
mkdir -p "$SCRATCH/cdir/sub"
got=$(complete_words baseline --root "$SCRATCH/cdir/s")
check "--root completes directories ($got)" test "$got" = "$SCRATCH/cdir/sub "
for c in baseline save; do
    for o in $("$NBSNAP" "$c" --help | grep -oE '(^| |\[)--[a-z][a-z-]+' | tr -d ' [' | sort -u); do
        check "the completion offers $c $o" bash -c '[[ " $1" == *" $2 "* ]]' _ "$(complete_words "$c" "${o:0:3}")" "$o"
    done
done

step "--help"
"$NBSNAPD" --help >"$SCRATCH/nbsnapd.help"
check "nbsnapd --help: no line over 80 columns (NB_HELP_WIDTH)" bash -c '! grep -E "^.{81}" "$1"' _ "$SCRATCH/nbsnapd.help"
check "nbsnapd --help: the --listen row" grep -qx '  --listen unix:PATH|tcp:HOST:PORT' "$SCRATCH/nbsnapd.help"
check "nbsnapd --help: --chunk-size" grep -q -- '--chunk-size BYTES .*8 MiB' "$SCRATCH/nbsnapd.help"
check "nbsnapd --help: NBSNAP_LOG_LEVEL" grep -q 'NBSNAP_LOG_LEVEL=debug' "$SCRATCH/nbsnapd.help"
check "nbsnapd --help: examples" grep -q '^Examples:' "$SCRATCH/nbsnapd.help"
check "nbsnap save --help: --chunk-size" bash -c '"$1" save --help | grep -q -- "--chunk-size BYTES"' _ "$NBSNAP"
for c in "" baseline save diff create-image status list delete cancel; do
    check "nbsnap $c --help: examples" bash -c '"$1" $2 --help | grep -q "^Examples\?: nbsnap "' _ "$NBSNAP" "$c"
done

step "socket_group that does not exist"
GROUP=nbsnap-no-such-group-$$
! getent group "$GROUP" >/dev/null || fail "group $GROUP exists"
mkdir -p "$SCRATCH/root" "$SCRATCH/state"
SOCK=$SCRATCH/mg.sock
"$NBSNAPD" --config /dev/null --listen "unix:$SOCK" --socket-group "$GROUP" --root "$SCRATCH/root" \
    --state-dir "$SCRATCH/state" --registry http://127.0.0.1:9 --base-image nbsnap-test/base:v1 \
    --project-id proj-1 --notebook-id nb-1 >"$SCRATCH/mg.log" 2>&1 &
DAEMON_PID=$!
at_exit "kill -9 $DAEMON_PID 2>/dev/null || true"
if ! _daemon_wait_health; then
    cat "$SCRATCH/mg.log" >&2
    fail "nbsnapd with a missing socket_group did not start"
fi
check "it warns naming the group" grep -q "socket_group $GROUP: no such group; the unix socket is root-only" "$SCRATCH/mg.log"
check "the socket is root's: 0660 root:root ($(stat -c '%a %U:%G' "$SOCK"))" test "$(stat -c '%a %U:%G' "$SOCK")" = "660 root:root"
chmod 0711 "$SCRATCH"
rc=0
setpriv --reuid=65534 --regid=65534 --clear-groups curl -s -o /dev/null --unix-socket "$SOCK" http://localhost/health || rc=$?
check "uid 65534 cannot connect (curl exit $rc, 7: could not connect)" test "$rc" = 7
rc=0
setpriv --reuid=65534 --regid=65534 --clear-groups "$NBSNAP" list --socket "$SOCK" --project-id proj-1 \
    --notebook-id nb-1 >/dev/null 2>"$SCRATCH/mg-cli.err" || rc=$?
check "nbsnap as uid 65534: exit 3, permission denied ($(cat "$SCRATCH/mg-cli.err"))" \
    bash -c '[[ $1 == 3 ]] && grep -q "permission denied on $2" "$3"' _ "$rc" "$SOCK" "$SCRATCH/mg-cli.err"
chmod 0666 "$SOCK" # only for this check: the daemon must refuse by SO_PEERCRED, not just by file mode
out=$(setpriv --reuid=65534 --regid=65534 --clear-groups curl -s -w '\n%{http_code}' --unix-socket "$SOCK" \
    http://localhost/health || true)
code=$(tail -n 1 <<<"$out")
check "on a socket opened to all, uid 65534 gets 403 (got $code)" test "$code" = 403
check "the 403 says only root may use it ($(head -n 1 <<<"$out"))" grep -q 'only root may use this socket' <<<"$out"
chmod 0700 "$SCRATCH"
code=$(curl -s -o /dev/null -w '%{http_code}' --unix-socket "$SOCK" http://localhost/health || true)
check "root is served (got $code)" test "$code" = 200
daemon_stop
check "it stops cleanly (rc $DAEMON_RC)" test "$DAEMON_RC" = 0

step "no agent: the CLI says so"
rc=0
"$NBSNAP" status some-id --socket "$SCRATCH/none.sock" >/dev/null 2>"$SCRATCH/none.err" || rc=$?
check "no socket file: exit 3 (got $rc)" test "$rc" = 3
check "no socket file: the message ($(cat "$SCRATCH/none.err"))" test "$(cat "$SCRATCH/none.err")" = \
    "nbsnap: nbsnapd is not running on $SCRATCH/none.sock (systemctl start nbsnapd.socket)"
"$PYTHON" -c 'import socket, sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])' "$SCRATCH/stale.sock"
rc=0
"$NBSNAP" list --socket "$SCRATCH/stale.sock" >/dev/null 2>"$SCRATCH/stale.err" || rc=$?
check "a socket file nobody listens on: exit 3 (got $rc)" test "$rc" = 3
check "a socket file nobody listens on: the message ($(cat "$SCRATCH/stale.err"))" test "$(cat "$SCRATCH/stale.err")" = \
    "nbsnap: nbsnapd is not running on $SCRATCH/stale.sock (systemctl start nbsnapd.socket)"
if [[ ! -e /run/nbsnap/nbsnap.sock && ! -e $CONFIG_PATH ]]; then
    rc=0
    "$NBSNAP" list >/dev/null 2>"$SCRATCH/default.err" || rc=$?
    check "the default socket: the issue's message ($(cat "$SCRATCH/default.err"))" test "$rc:$(cat "$SCRATCH/default.err")" = \
        "3:nbsnap: nbsnapd is not running on /run/nbsnap/nbsnap.sock (systemctl start nbsnapd.socket)"
else
    note "an agent or its config is installed on this machine: the default socket's message is not tried"
fi

finish_checks
