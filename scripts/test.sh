#!/bin/bash
# Installs what is needed, checks the C sources' style (scripts/check-style.sh: clang-format, banned functions;
# a violation fails the run before anything is built), builds nbsnap twice (release, and AddressSanitizer +
# UndefinedBehaviorSanitizer) and runs the whole test suite with ctest on both. Needs root (overlayfs, device
# nodes, chown), as CI has.
#   ./scripts/test.sh            everything
#   NBSNAP_TEST_SANITIZE=0 ...   skip the sanitizer pass
set -euo pipefail
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$src/scripts/install-deps.sh"

echo "==== style: scripts/check-style.sh" >&2
style_rc=0
"$src/scripts/check-style.sh" || style_rc=$?
if ((style_rc != 0)); then
    echo "==== style check failed (exit $style_rc): nothing built, no test run. Fix what it lists above" \
        "(clang-format -i FILE for the format), then run ./scripts/check-style.sh until it passes." >&2
    exit 1
fi

jobs=$(nproc)
status=0
run_suite() { # name, build dir, cmake args...
    local name=$1 dir=$2
    shift 2
    echo "==== $name: build ($dir)" >&2
    BUILD_DIR=$dir "$src/scripts/build.sh" -DNBSNAP_WERROR=ON "$@"
    echo "==== $name: ctest" >&2
    # a test that fails is run once more: a failure that repeats is a failure (flakes are listed in the
    # closing notes of the session that saw them, to be fixed at their cause)
    ctest --test-dir "$dir" --output-on-failure --timeout 1500 -j1 --repeat until-pass:2 || status=1
}

if [[ ${NBSNAP_TEST_SANITIZE:-1} != 0 ]]; then
    # leaks are checked too; the halt_on_error keeps a first report from being buried
    export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:halt_on_error=1:abort_on_error=1}
    export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
    run_suite "ASan+UBSan" "$src/build-asan" -DNBSNAP_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
    unset ASAN_OPTIONS UBSAN_OPTIONS
fi
run_suite "release" "$src/build"
exit $status
