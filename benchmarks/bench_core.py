"""The core benchmark's protocol lives in the package (``shoal.bench``) so that ``shoal bench``
runs it anywhere; this script runs it from a checkout with the peer adapters
(benchmarks/peers.py, benchmark-only) and writes to benchmarks/results.

    .venv/bin/python benchmarks/bench_core.py [--dataset DIR] [--reps 3] [--out DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from shoal.bench import main, median_time  # noqa: E402,F401  (median_time: the other benchmarks)


def write_results(out: str, stem: str, lines: list[str], data) -> None:
    """Print the table and write ``stem``.md (the table) and ``stem``.json (``data``) to ``out``."""
    import json

    table = "\n".join(lines)
    print(table)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.md").write_text(table + "\n")
    (folder / f"{stem}.json").write_text(json.dumps(data, indent=1, default=float))

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--out" not in argv and not any(a.startswith("--out=") for a in argv):
        argv += ["--out", str(ROOT / "benchmarks" / "results")]
    if "--peers" not in argv:
        argv += ["--peers", str(ROOT / "benchmarks" / "peers.py")]
    raise SystemExit(main(argv))
