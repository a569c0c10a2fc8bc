#!/usr/bin/env bash
# The project's one entry point; each command sets itself up (a venv in .venv, installed from
# pyproject.toml) on a fresh machine.
#   ./run.sh demo        build an index on the bundled real data: results, recall, speed
#   ./run.sh test        the test suite (tests that need the full dataset skip without it)
#   ./run.sh bench ...   the benchmark against hnswlib, faiss and usearch (benchmarks/)
set -euo pipefail
cd "$(dirname "$0")"
cmd="${1:-demo}"
shift || true

extras=test                      # the demo needs the package alone
[ "$cmd" = bench ] && extras=bench,test
[ "$cmd" = demo ] && extras=
venv=.venv
stamp="$venv/.installed-$extras-$(cat pyproject.toml constraints-test.txt | cksum | cut -d' ' -f1)"
if [ ! -f "$stamp" ]; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  # (constraints-test.txt: PyTorch, for the default embedding model, as a CPU build)
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".${extras:+[$extras]}" -c constraints-test.txt
  touch "$stamp"
fi
py="$venv/bin/python"

case "$cmd" in
  demo)  exec "$py" -m shoal.demo "$@" ;;
  test)  exec "$py" -m pytest -q -rs "$@" ;;
  bench) exec "$py" benchmarks/bench_core.py "$@" ;;
  *) echo "usage: ./run.sh {demo|test|bench} [args]" >&2; exit 2 ;;
esac
