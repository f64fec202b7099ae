#!/bin/bash
# Checks the C sources' style; prints each violation as FILE:LINE: WHAT and exits 1 when there is any
# (0 when clean, 2 when it cannot check). Takes a second or two. Run from anywhere:
#   ./scripts/check-style.sh            every C source of the tree
#   ./scripts/check-style.sh FILE...    only these files
#
# The files: every *.c and *.h that git tracks (plus new files git does not ignore yet, so that a file not
# yet added is checked too), or, outside a git checkout, every *.c and *.h that `find` sees (build*/ and
# .git/ left out). Fuzz corpora (tests/fuzz/corpus/) are data, never checked.
#
# 1. clang-format: `clang-format --dry-run -Werror` with the repository's .clang-format must change nothing.
#    The format is that of Debian 12's clang-format 14 (package clang-format; CLANG_FORMAT=... picks another
#    binary; another version may format differently, and is warned about). Fix: clang-format -i FILE
#
# 2. Banned functions, as calls (the name as a whole word followed by "(", outside comments and string
#    literals; a member named so, x.gets( or x->gets(, is not a call of it):
#      sprintf, vsprintf  no bound on the output: use snprintf / vsnprintf and check the result
#      strcpy, strcat     no bound: use snprintf, or memcpy with lengths that are known
#      strtok             hidden static state, not thread-safe: use strtok_r (allowed)
#      atoi               no error detection: use strtol / strtoul with errno and end-pointer checks
#      gets               no bound at all: use fgets
#    Allowed on purpose: snprintf, vsnprintf, strtok_r, strncpy/strncat (bounded; left to review), strtol.
set -euo pipefail
src=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
(($#)) || cd "$src" # files named on the command line are taken as they are, from the current directory

cf=${CLANG_FORMAT:-clang-format}
if ! command -v "$cf" >/dev/null 2>&1; then
    echo "check-style: $cf not found: install it (scripts/install-deps.sh installs clang-format)" >&2
    exit 2
fi
if [[ $("$cf" --version) != *"version 14."* ]]; then
    echo "check-style: warning: $("$cf" --version | head -n 1) is not clang-format 14, whose format CI checks" >&2
fi

files=()
if (($#)); then
    files=("$@")
elif git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    while IFS= read -r -d '' f; do
        [[ -f $f ]] && files+=("$f") # a tracked file deleted or renamed in the work tree is gone
    done < <(git ls-files -z --cached --others --exclude-standard -- '*.c' '*.h' | sort -zu |
        grep -zv '^tests/fuzz/corpus/' || true)
else
    while IFS= read -r -d '' f; do
        files+=("${f#./}")
    done < <(find . \( -path './build*' -o -path './.git' -o -path './tests/fuzz/corpus' \) -prune -o \
        -type f \( -name '*.c' -o -name '*.h' \) -print0 | sort -z)
fi
if ((${#files[@]} == 0)); then
    echo "check-style: no C source found under $src" >&2
    exit 2
fi

out=$(mktemp)
trap 'rm -f "$out"' EXIT

# 1. clang-format: one line per line it would change (it reports every column), FILE:LINE: clang-format
cf_rc=0
printf '%s\0' "${files[@]}" | xargs -0 "$cf" --dry-run -Werror --style=file >/dev/null 2>"$out" || cf_rc=$?
format_bad=$(sed -nE 's/^(.+):([0-9]+):[0-9]+: error: code should be clang-formatted.*/\1:\2/p' "$out" | uniq)
if ((cf_rc != 0)) && [[ -z $format_bad ]]; then
    cat "$out" >&2
    echo "check-style: $cf failed (exit $cf_rc)" >&2
    exit 2
fi

# 2. banned calls: comments, string and character literals blanked (newlines kept, so line numbers hold)
banned=$(perl -e '
    my $re = qr/(?<![\w.>])(sprintf|vsprintf|strcpy|strcat|strtok|atoi|gets)\s*\(/;
    my %fix = (sprintf => "snprintf", vsprintf => "vsnprintf", strcpy => "snprintf or memcpy",
               strcat => "snprintf or memcpy", strtok => "strtok_r", atoi => "strtol with checks",
               gets => "fgets");
    for my $file (@ARGV) {
        open(my $fh, "<", $file) or die "check-style: $file: $!\n";
        local $/;
        my $text = <$fh>;
        close $fh;
        $text =~ s{(/\*.*?\*/|//[^\n]*|"(?:\\.|[^"\\\n])*"|\x27(?:\\.|[^\x27\\\n])*\x27)}
                  { (my $k = $1) =~ s/[^\n]/ /g; $k }gse;
        my $n = 0;
        for my $line (split /\n/, $text, -1) {
            $n++;
            while ($line =~ /$re/g) {
                print "$file:$n: banned function $1(): use $fix{$1}\n";
            }
        }
    }' "${files[@]}")

status=0
if [[ -n $format_bad ]]; then
    sed 's/$/: not clang-formatted/' <<<"$format_bad"
    status=1
fi
if [[ -n $banned ]]; then
    printf '%s\n' "$banned"
    status=1
fi
if ((status)); then
    {
        echo
        echo "check-style: the C sources break the style (C files checked: ${#files[@]})."
        if [[ -n $format_bad ]]; then
            echo "  format them (clang-format 14, the repository's .clang-format) and commit the result:"
            cut -d: -f1 <<<"$format_bad" | sort -u | sed "s|^|    $cf -i |"
        fi
        if [[ -n $banned ]]; then
            echo "  replace the banned calls as each line says (the header of scripts/check-style.sh says why)"
        fi
    } >&2
    exit 1
fi
echo "check-style: ${#files[@]} C files clang-formatted, no banned call" >&2
