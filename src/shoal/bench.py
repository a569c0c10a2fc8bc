"""shoal's core index against hnswlib, faiss-cpu and usearch, in one run, on each dataset.

The peers are benchmark-only: their adapters are in benchmarks/peers.py (``--peers``), never
in the package; without them the run measures shoal alone.

Protocol (issues 3 and 11): on each dataset (default: wordnet-minilm-384 and pkg-minilm-384),
all base vectors, all queries, recall@10 against the exact top-10; builds with 2 threads; search QPS with 1 thread over the queries as one batch call; every build in a
fresh process; medians of ``--reps`` runs; every figure also as a ratio to hnswlib (M=16,
ef_construction=64) measured in the same run.

    ./run.sh bench                                  # full protocol on ../shared/datasets/...
    shoal bench DATASET_DIR --out DIR --reps 3      # the same, installed anywhere

Writes ``core.json``, ``core.md`` (the tables) and ``recall_qps-DATASET.png`` per dataset to
``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from shoal.datasets import FULL, PKG, load_dataset, recall_at_k

EFS = [10, 16, 20, 24, 28, 32, 40, 48, 64, 80, 96, 128, 192, 256]
TARGET = 0.95
HIGH = 0.99


# ----------------------------------------------------------------------------- worker side
def rss_now() -> int:
    """This process's resident set size now, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_parts() -> dict[str, int]:
    """This process's resident memory by kind, in bytes: ``anon`` (its own: heap, arrays)
    and ``file`` (pages of mapped files, which the kernel may drop and read again)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:")):
                out[line[3:7].lower()] = int(line.split()[1]) * 1024
    return out


def rss_peak() -> int:
    """This process's peak resident set size (since start or ``reset_peak``), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> None:
    """Start ``rss_peak`` afresh from the current size (Linux; a no-op where refused)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def median_time(fn, reps: int = 3) -> float:
    """Median wall time of ``reps`` calls of ``fn``."""
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _load_peers(path: str):
    """The module at ``path`` that builds peer engines (``build(engine, base, m, efc, threads)``,
    as ``_build``): benchmarks/peers.py in a checkout."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("shoal_bench_peers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build(engine: str, base: np.ndarray, m: int, efc: int, threads: int, peers: str | None = None):
    """Build an index; returns (search(queries, k, ef) -> labels, extra info). Engines other
    than shoal come from the ``peers`` module file."""
    n, dim = base.shape
    if engine == "shoal":
        import shoal

        index = shoal.Index(dim, "cosine", m=m, ef_construction=efc, seed=0)
        index.add(base, num_threads=threads)
        stats = index.stats()
        info = {"memory_bytes": stats["memory_bytes"],
                "vectors_plus_level0_bytes": int(n * dim * 4 + n * 2 * m * 4 + n * 4),
                "bytes_per_vector": {"float32": stats["vector_bytes"] / stats["capacity"],
                                     "codes": stats["code_bytes"] / stats["capacity"],
                                     "links": stats["link_bytes"] / stats["capacity"]},
                "distance_evaluations_per_insert": index.last_add_stats["distance_evaluations_per_insert"],
                "index": index}
        return (lambda q, k, ef: index.search(q, k, ef=ef, num_threads=1)[0]), info
    if peers:  # the peer libraries' adapters live outside the package (benchmark-only)
        return _load_peers(peers).build(engine, base, m, efc, threads)
    raise ValueError(f"unknown engine {engine!r}")


def worker(spec: dict) -> dict:
    ds = load_dataset(spec["dataset"])
    base = ds.base[: spec.get("n") or len(ds.base)]
    gt = ds.gt
    if spec.get("n"):  # a prefix of the base: exact top-10 for it
        gt = np.argsort(-(ds.queries @ base.T), axis=1)[:, :10]
    base = np.ascontiguousarray(base)
    peers = spec.get("peers")
    _build(spec["engine"], base[:2000], spec["m"], spec["efc"], spec["threads"], peers)  # load code once
    rss0 = rss_now()
    reset_peak()
    t = time.perf_counter()
    search, info = _build(spec["engine"], base, spec["m"], spec["efc"], spec["threads"], peers)
    build_s = time.perf_counter() - t
    index = info.pop("index", None)
    out = {**spec, **info, "build_s": build_s, "vec_per_s": len(base) / build_s,
           "build_peak_rss_delta": rss_peak() - rss0, "curve": []}
    if spec.get("search", True):
        search(ds.queries[:10], 10, 16)
        for ef in spec.get("efs", EFS):
            labels = search(ds.queries, 10, ef)
            secs = median_time(lambda: search(ds.queries, 10, ef))
            out["curve"].append({"ef": ef, "recall": recall_at_k(labels, gt), "qps": len(ds.queries) / secs})
        ef95 = next((p["ef"] for p in out["curve"] if p["recall"] >= TARGET), None)
        if ef95 is not None:  # one query per call, at the first ef of the sweep that reaches 0.95
            if index is not None:
                one = lambda i: index.search(ds.queries[i], 10, ef=ef95, num_threads=1)  # noqa: E731
            else:
                one = lambda i: search(ds.queries[i:i + 1], 10, ef95)  # noqa: E731
            lat = []
            for i in range(len(ds.queries)):
                t = time.perf_counter()
                one(i)
                lat.append(time.perf_counter() - t)
            out["latency_ef"] = ef95
            out["latency_us_median"] = float(np.median(lat) * 1e6)
            out["latency_us_p99"] = float(np.percentile(lat, 99) * 1e6)
        if index is not None:  # no ef at all: the calibrated default
            out["default"], out["calibrate_s"], out["learned"] = default_recall(
                index, ds.queries, gt, spec["threads"])
    return out


def default_recall(index, queries: np.ndarray, gt: np.ndarray, threads: int) -> tuple[dict, float, dict]:
    """The default beam's figures: calibrated on the index's own rows, as a fresh index is
    (ef, recall and QPS on all queries; calibration seconds), and after learning the queries:
    calibrated on the even-numbered queries, measured on the odd ones (never on its own)."""
    t = time.perf_counter()
    index.calibrate(num_threads=threads, observed=False)
    secs_cal = time.perf_counter() - t
    ef = index.default_ef
    labels = index.search(queries, 10, ef=ef, num_threads=1)[0]
    secs = median_time(lambda: index.search(queries, 10, ef=ef, num_threads=1))
    by_rows = {"ef": ef, "recall": recall_at_k(labels, gt), "qps": len(queries) / secs}
    index.calibrate(queries[0::2], num_threads=threads)
    learned = {"ef": index.default_ef,
               "recall": recall_at_k(index.search(queries[1::2], 10, ef=index.default_ef,
                                                  num_threads=1)[0], gt[1::2])}
    return by_rows, secs_cal, learned


# ----------------------------------------------------------------------------- driver side
def run_worker(spec: dict, env: dict | None = None) -> dict:
    proc = subprocess.run([sys.executable, "-m", "shoal.bench", "--worker", json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def qps_at(curve: list[dict], target: float = TARGET) -> float | None:
    """QPS at ``target`` recall, interpolated linearly between the two ef points around it."""
    for a, b in zip(curve, curve[1:]):
        if a["recall"] < target <= b["recall"]:
            return a["qps"] + (b["qps"] - a["qps"]) * (target - a["recall"]) / (b["recall"] - a["recall"])
    if curve and curve[0]["recall"] >= target:
        return curve[0]["qps"]
    return None


def median_curve(runs: list[dict]) -> list[dict]:
    return [{"ef": pts[0]["ef"], "recall": statistics.median(p["recall"] for p in pts),
             "qps": statistics.median(p["qps"] for p in pts)} for pts in zip(*(r["curve"] for r in runs))]


def summarize(runs: list[dict]) -> dict:
    curve = median_curve(runs)
    out = {"vec_per_s": statistics.median(r["vec_per_s"] for r in runs),
           "build_s": statistics.median(r["build_s"] for r in runs),
           "qps_at_095": qps_at(curve), "qps_at_099": qps_at(curve, HIGH),
           "max_recall": max(p["recall"] for p in curve), "curve": curve, "runs": runs}
    for key in ("memory_bytes", "vectors_plus_level0_bytes", "build_peak_rss_delta",
                "distance_evaluations_per_insert", "latency_us_median", "latency_us_p99",
                "calibrate_s"):
        if key in runs[0]:
            out[key] = statistics.median(r[key] for r in runs)
    if "default" in runs[0]:
        out["default"] = {key: statistics.median(r["default"][key] for r in runs)
                          for key in ("ef", "recall", "qps")}
    if "learned" in runs[0]:
        out["learned"] = {key: statistics.median(r["learned"][key] for r in runs) for key in ("ef", "recall")}
    if "bytes_per_vector" in runs[0]:
        out["bytes_per_vector"] = runs[0]["bytes_per_vector"]
    return out


def cold_start(dataset: str, reps: int) -> dict:
    """Import time, load + first query in a fresh process, and the first-ever compile time."""
    src = str(Path(__file__).resolve().parents[1])  # the shoal package's parent
    env = {**os.environ, "PYTHONPATH": src}
    imp = []
    for _ in range(max(reps, 5)):
        code = "import time; t = time.perf_counter(); import shoal; print(time.perf_counter() - t)"
        imp.append(float(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                        text=True, check=True).stdout))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "wordnet.shoal")
        save = ("import numpy as np, shoal\n"
                f"from shoal.datasets import load_dataset\nds = load_dataset({dataset!r})\n"
                "i = shoal.Index(ds.base.shape[1]); i.add(ds.base)\n"
                f"i.save({path!r})\n")
        subprocess.run([sys.executable, "-c", save], env=env, check=True)
        first = []
        for mmap in (False, True):
            for _ in range(reps):
                code = ("import time; t = time.perf_counter(); import numpy as np, shoal\n"
                        f"i = shoal.Index.load({path!r}, mmap={mmap})\n"
                        "i.search(np.ones(i.dim, np.float32), 10)\n"
                        "print(time.perf_counter() - t)")
                first.append((mmap, float(subprocess.run([sys.executable, "-c", code], env=env,
                                                         capture_output=True, text=True,
                                                         check=True).stdout)))
        cache = os.path.join(tmp, "numba-cache")
        code = ("import time, numpy as np; import shoal; x = np.random.default_rng(0).random((2000, 64), np.float32)\n"
                "t = time.perf_counter(); i = shoal.Index(64); i.add(x); i.search(x[:5], 10)\n"
                "i2 = shoal.Index(64, 'l2'); i2.add(x); i2.search(x[:5], 10)\n"
                "print(time.perf_counter() - t)")
        compile_s = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                         env={**env, "NUMBA_CACHE_DIR": cache}).stdout)
    return {"import_s": statistics.median(imp),
            "load_first_query_s": statistics.median(s for m, s in first if not m),
            "load_first_query_mmap_s": statistics.median(s for m, s in first if m),
            "cold_compile_s": compile_s}


def fmt(x, spec="{:,.0f}"):
    return "n/a" if x is None else spec.format(x)


def main_table(dataset: str, args, engines: list[str], m_def: int, efc_def: int) -> tuple[list[str], dict]:
    """The main comparison on one dataset: lines of its table and the summaries."""
    base = {"dataset": dataset, "threads": 2, "peers": args.peers and os.path.abspath(args.peers)}
    configs = [("shoal", m_def, efc_def, "shoal (defaults)")]
    if (m_def, efc_def) != (16, 64):
        configs.append(("shoal", 16, 64, "shoal M=16 efc=64"))
    configs += [(e, 16, 64, f"{e} M=16 efc=64") for e in engines]
    runs: dict[str, list] = {label: [] for *_, label in configs}
    for rep in range(args.reps):  # interleave engines so that noise hits all alike
        for engine, m, efc, label in configs:
            r = run_worker({**base, "engine": engine, "m": m, "efc": efc})
            runs[label].append(r)
            print(f"  {Path(dataset).name} rep {rep + 1} {label}: {r['vec_per_s']:,.0f} vec/s", flush=True)
    summary = {label: summarize(r) for label, r in runs.items()}
    ref_label = "hnswlib M=16 efc=64" if "hnswlib" in engines else configs[-1][3]
    ref_name = ref_label.split(" ")[0] if "hnswlib" in engines else ref_label
    ref = summary[ref_label]

    def ratio(x, y):
        return fmt(x and y and x / y, "{:.2f}x")

    lines = [f"Dataset {Path(dataset).name} ({len(load_dataset(dataset).base):,} vectors); build 2 threads, "
             f"search 1 thread (one batch of queries); medians of {args.reps} runs, each build in a fresh "
             "process. Latency: one query per call, at the first ef of the sweep that reaches 0.95.", "",
             f"| index | build vec/s | build vs {ref_name} | QPS at recall@10 0.95 | vs {ref_name} | "
             f"QPS at 0.99 | vs {ref_name} | 1-query latency median / p99 | max recall@10 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, s in summary.items():
        lat = (f"{s['latency_us_median']:.0f} / {s['latency_us_p99']:.0f} us"
               if "latency_us_median" in s else "n/a")
        lines.append(f"| {label} | {fmt(s['vec_per_s'])} | {s['vec_per_s'] / ref['vec_per_s']:.2f}x | "
                     f"{fmt(s['qps_at_095'])} | {ratio(s['qps_at_095'], ref['qps_at_095'])} | "
                     f"{fmt(s['qps_at_099'])} | {ratio(s['qps_at_099'], ref['qps_at_099'])} | {lat} | "
                     f"{s['max_recall']:.3f} |")
    sd = summary["shoal (defaults)"]
    if "default" in sd:
        d = sd["default"]
        lines += ["", f"shoal with no `ef` (the calibrated default, ef={d['ef']:.0f}; calibration took "
                      f"{sd['calibrate_s']:.2f} s): recall@10 {d['recall']:.3f} at {fmt(d['qps'])} QPS "
                      f"({ratio(d['qps'], ref['qps_at_095'])} of {ref_name}'s QPS at 0.95), calibrated "
                      f"on the index's own rows as a fresh index is."]
        if "learned" in sd:
            lw = sd["learned"]
            lines += [f"After learning its queries (calibrated on the even-numbered queries): ef={lw['ef']:.0f}, "
                      f"recall@10 {lw['recall']:.3f} on the odd-numbered ones."]
    if "bytes_per_vector" in sd:
        b = sd["bytes_per_vector"]
        lines += [f"shoal bytes per vector: float32 rows {b['float32']:.0f}, SQ8 codes {b['codes']:.0f}, "
                  f"links {b['links']:.0f}; in RAM: float32 + links {b['float32'] + b['links']:.0f} "
                  f"(quantize=None), codes + float32 + links {b['float32'] + b['codes'] + b['links']:.0f} "
                  f"(default), codes + links with the float32 rows memory-mapped {b['codes'] + b['links']:.0f}; "
                  f"peak RSS growth during build {sd['build_peak_rss_delta'] / sd['memory_bytes']:.2f}x the index."]
    return lines, summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", action="append",
                    help="a dataset directory (repeatable); default: wordnet-minilm-384 and "
                         "pkg-minilm-384 where present")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default="shoal-bench")
    ap.add_argument("--engines", default="shoal,hnswlib,faiss,usearch",
                    help="engines to compare; others than shoal need --peers")
    ap.add_argument("--peers", help="a module file that builds the peer engines (benchmarks/peers.py)")
    ap.add_argument("--sweep", default="32,40,48,64,100",
                    help="ef_construction values for the Pareto sweep on each dataset ('' to skip)")
    ap.add_argument("--skip-scaling", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    import shoal

    defaults = shoal.Index(1)
    m_def, efc_def = defaults.m, defaults.ef_construction
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    datasets = args.dataset or [str(p) for p in (FULL, PKG) if (p / "base.npy").is_file()]
    if not datasets:
        ap.error(f"no dataset: pass --dataset DIR (looked for {FULL} and {PKG})")
    engines = [e for e in args.engines.split(",") if e and e != "shoal" and args.peers]
    results: dict = {"protocol": {"datasets": datasets, "reps": args.reps, "build_threads": 2,
                                  "search_threads": 1, "k": 10, "target_recall": TARGET},
                     "main": {}}
    lines: list[str] = []
    for dataset in datasets:
        table, summary = main_table(dataset, args, engines, m_def, efc_def)
        name = Path(dataset).name
        results["main"][name] = summary
        lines += table + ["", f"![recall vs QPS on {name}](recall_qps-{name}.png)", ""]
        plot(summary, out / f"recall_qps-{name}.png", name)
    first = datasets[0]
    base = {"dataset": first, "threads": 2, "peers": args.peers and os.path.abspath(args.peers)}
    sd = results["main"][Path(first).name]["shoal (defaults)"]

    if args.sweep:
        results["sweep"] = {}
        swept = ["shoal"] + (["hnswlib"] if "hnswlib" in engines else [])
        for dataset in datasets:
            dbase = {**base, "dataset": dataset}
            sweep = {}
            lines += [f"Pareto sweep over ef_construction on {Path(dataset).name} (M=16; one build each):", "",
                      "| ef_construction | " + " | ".join(f"{e} vec/s | {e} QPS@0.95" for e in swept) + " |",
                      "|---|" + "---|---|" * len(swept)]
            for efc in [int(v) for v in args.sweep.split(",")]:
                row = {e: summarize([run_worker({**dbase, "engine": e, "m": 16, "efc": efc})]) for e in swept}
                sweep[efc] = row
                lines.append(f"| {efc} | " + " | ".join(f"{fmt(row[e]['vec_per_s'])} | {fmt(row[e]['qps_at_095'])}"
                                                        for e in swept) + " |")
                print(f"  sweep {Path(dataset).name} efc={efc} done", flush=True)
            results["sweep"][Path(dataset).name] = sweep
            lines.append("")

    if not args.skip_scaling:
        one = [run_worker({**base, "engine": "shoal", "m": m_def, "efc": efc_def, "threads": 1, "search": False})
               for _ in range(args.reps)]
        speedup = sd["vec_per_s"] / statistics.median(r["vec_per_s"] for r in one)
        sizes, evals = {}, {}
        for n in (10_000, 30_000, None):
            if n is None:
                n = len(load_dataset(first).base)
                sizes[n], evals[n] = sd["build_s"], sd["distance_evaluations_per_insert"]
                continue
            rs = [run_worker({**base, "engine": "shoal", "m": m_def, "efc": efc_def, "n": n, "search": False})
                  for _ in range(args.reps)]
            sizes[n] = statistics.median(r["build_s"] for r in rs)
            evals[n] = statistics.median(r["distance_evaluations_per_insert"] for r in rs)
        n0 = min(sizes)
        t_rel = {n: (s / (n * np.log(n))) / (sizes[n0] / (n0 * np.log(n0))) for n, s in sizes.items()}
        e_rel = {n: (e / np.log(n)) / (evals[n0] / np.log(n0)) for n, e in evals.items()}
        results["scaling"] = {"threads_2_vs_1": speedup, "build_s_by_n": sizes,
                              "evaluations_per_insert_by_n": evals,
                              "time_per_n_log_n_relative": t_rel, "evaluations_per_log_n_relative": e_rel}
        lines += [f"Scaling on {Path(first).name}: 2 threads build {speedup:.2f}x faster than 1.", "",
                  "| n | build s | time / (n log n), rel. | distance evaluations per insert | evaluations / log n, rel. |",
                  "|---|---|---|---|---|"]
        lines += [f"| {n:,} | {sizes[n]:.2f} | {t_rel[n]:.2f} | {evals[n]:.0f} | {e_rel[n]:.2f} |" for n in sizes]
        lines.append("")

    mem = sd["memory_bytes"] / sd["vectors_plus_level0_bytes"]
    results["memory"] = {"index_vs_vectors_plus_level0": mem}
    cold = cold_start(first, args.reps)
    results["cold_start"] = cold
    lines += [f"Cold start: import shoal {cold['import_s']:.3f} s; fresh process load + first query "
              f"{cold['load_first_query_s']:.2f} s ({cold['load_first_query_mmap_s']:.2f} s with mmap=True); "
              f"first-ever kernel compile {cold['cold_compile_s']:.1f} s.",
              f"Distance evaluations per insert (shoal defaults, {Path(first).name}): "
              f"{sd['distance_evaluations_per_insert']:.0f}."]
    table = "\n".join(lines)
    print("\n" + table)
    (out / "core.md").write_text(table + "\n")
    (out / "core.json").write_text(json.dumps(results, indent=1, default=float))
    return 0


def plot(summary: dict, path: Path, name: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, s in summary.items():
        ax.plot([p["recall"] for p in s["curve"]], [p["qps"] for p in s["curve"]], marker="o", ms=3,
                label=f"{label} ({s['vec_per_s'] / 1000:.1f}K vec/s build)")
    ax.axvline(TARGET, color="grey", ls=":", lw=1)
    ax.set_xlabel("recall@10")
    ax.set_ylabel("queries per second (1 thread)")
    ax.set_yscale("log")
    ax.set_xlim(0.85, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{name}: recall vs QPS (ef sweep)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
