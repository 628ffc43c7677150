#!/usr/bin/env bash
# Points every Tether container at another image, in the one place that sets it (the `images`
# entry of deploy/components/image/kustomization.yaml, what `kustomize edit set image` writes), and rebuilds
# dist/:
#   scripts/set-image.sh registry.example.com/tether:0.1.0
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 IMAGE:TAG" >&2; exit 2; }
cd "$(dirname "$0")/.."
case $1 in *:*) ;; *) echo "$0: give IMAGE:TAG" >&2; exit 2 ;; esac
name=${1%:*} tag=${1##*:}
python3 - deploy/components/image/kustomization.yaml "$name" "$tag" <<'PY'
import sys
import yaml
path, name, tag = sys.argv[1:]
with open(path) as f:
    text = f.read()
doc = yaml.safe_load(text)
entry = next(i for i in doc["images"] if i["name"] == "tether.local/tether")
old = f"    newName: {entry['newName']}\n    newTag: {entry['newTag']}\n"
if old not in text:
    raise SystemExit(f"{path}: the tether.local/tether image entry is not in the expected form")
with open(path, "w") as f:
    f.write(text.replace(old, f"    newName: {name}\n    newTag: {tag}\n"))
PY
scripts/build-dist.sh >/dev/null
grep -h "image: .*/tether:" dist/tether.yaml | sort -u
