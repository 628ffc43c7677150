#!/usr/bin/env bash
# Points every Tether container in deploy/ at another image reference:
#   scripts/set-image.sh registry.example.com/tether:0.1.0
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 IMAGE[:TAG]" >&2; exit 2; }
cd "$(dirname "$0")/.."
sed -i -E "s#^(\s+image: )[^ ]*/tether:[^ ]+\$#\1$1#" deploy/*.yaml
grep -h "image: .*/tether:" deploy/*.yaml | sort -u
