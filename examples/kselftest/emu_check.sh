#!/bin/bash
# SPDX-License-Identifier: MIT
#
# kselftest-style wrapper around `emu check`: compares the x86 user-copy assembly of two
# revisions of a kernel tree and prints KTAP v1 on stdout.
#
# Usage: emu_check.sh [OLD [NEW]]        (default: HEAD~1 HEAD)
#
# Environment:
#   EMU        the emu command (default: emu on PATH)
#   EMU_TREE   the kernel git tree (default: the current directory)
#   EMU_FILE   file inside the tree (default: arch/x86/lib/copy_user_64.S)
#   EMU_ALLOW  comma list of change classes to accept (emu check --allow)
#   EMU_JUNIT  also write a JUnit XML report to this path
#
# Exit status, as kselftest reads it: 0 pass (no regression), 1 fail (a regression),
# 2 usage or input error (reported on stderr), 4 skip (emu is not installed).

KSFT_SKIP=4
EMU=${EMU:-emu}
TREE=${EMU_TREE:-.}
FILE=${EMU_FILE:-arch/x86/lib/copy_user_64.S}
OLD=${1:-HEAD~1}
NEW=${2:-HEAD}

if ! command -v "$EMU" >/dev/null 2>&1; then
	echo "KTAP version 1"
	echo "1..0 # SKIP emu_check: '$EMU' not found (pip install mce-emu)"
	exit $KSFT_SKIP
fi

args=(check --ktap --tree "$TREE" --file "$FILE")
IFS=',' read -r -a allow <<<"${EMU_ALLOW:-}"
for class in "${allow[@]}"; do
	[ -n "$class" ] && args+=(--allow "$class")
done
[ -n "${EMU_JUNIT:-}" ] && args+=(--junit "$EMU_JUNIT")

"$EMU" "${args[@]}" "$OLD" "$NEW"
exit $?
