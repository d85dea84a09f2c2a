#!/usr/bin/env bash
# Run pytest on a snapshot of HEAD (a detached worktree in /tmp), so edits to the working tree during a
# long run cannot leak into the worker processes the tests start. Arguments go to pytest.
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
snap=${SNAPSHOT_DIR:-/tmp/trail-snapshot}
git -C "$repo" worktree remove --force "$snap" 2>/dev/null || rm -rf "$snap"
git -C "$repo" worktree add --detach -q "$snap" HEAD
cd "$snap"
PYTHONPATH="$snap" "$repo/.venv/bin/pytest" -p no:cacheprovider "$@"
