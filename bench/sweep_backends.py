"""One real sweep on the local backend and on Ray, same machine, same trials (issue 21).

Every trial of `rmio ablate` seeds itself, so both backends must produce the same table; this
script runs the sweep once per backend into fresh directories, one after the other, times each
whole `rmio ablate` command on the wall clock, and checks that the two tables agree cell by cell.
Run it on an otherwise idle machine: the numbers are wall times.

    python bench/sweep_backends.py p_mask_smax_2s3z --seeds 0 --jobs 2 --out runs/sweep-backends

Writes bench/results/sweep_backends.md and .json (the sweep directories stay under --out).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from rmio.train.ablation_config import resolve_sweep

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def _sweep_file(name: str, seeds: list[int] | None, out: Path) -> Path:
    """The shipped sweep, or a copy of it with only ``seeds`` (a real budget, fewer seeds)."""
    src = resolve_sweep(name)
    if not seeds:
        return src
    data = yaml.safe_load(src.read_text())
    data["seeds"] = seeds
    out.mkdir(parents=True, exist_ok=True)
    dst = out / src.name
    dst.write_text(yaml.safe_dump(data, sort_keys=False))
    return dst


def _run(sweep: Path, out: Path, backend: str, jobs: int) -> float:
    cmd = ["rmio", "ablate", str(sweep), "--out", str(out), "--jobs", str(jobs)]
    if backend != "local":
        cmd += ["--backend", backend]
    log = out.parent / f"{out.name}.log"
    t0 = time.monotonic()
    with log.open("w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=False).returncode
    wall = time.monotonic() - t0
    if rc != 0:
        sys.exit(f"`{' '.join(cmd)}` failed (exit {rc}); its output: {log}")
    return wall


def _flatten(value: object, key: str, cells: dict[str, float]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(v, f"{key}/{k}", cells)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _flatten(v, f"{key}[{i}]", cells)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        cells[key] = float(value)


def _cells(table: dict) -> dict[str, float]:
    """Every number of the table's rows (curves and per-seed values included), keyed by path."""
    cells: dict[str, float] = {}
    for row in table.get("rows", []):
        _flatten(row, str(row.get("variant")), cells)
    return cells


def _differences(a: dict[str, float], b: dict[str, float]) -> list[str]:
    diffs = [k for k in sorted(set(a) | set(b)) if k not in a or k not in b]
    for k in sorted(set(a) & set(b)):
        x, y = a[k], b[k]
        if not (x == y or (math.isnan(x) and math.isnan(y))):
            diffs.append(f"{k}: {x} against {y}")
    return diffs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep", help="a shipped sweep name or a sweep YAML")
    ap.add_argument("--seeds", default="", help="comma-separated training seeds (default: all)")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", type=Path, default=Path("runs/sweep-backends"))
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    sweep = _sweep_file(args.sweep, seeds, args.out)
    rows = []
    tables = {}
    for backend in ("local", "ray"):
        out = args.out / backend
        if out.exists():  # a wall time means a sweep from scratch, never a resumed one
            shutil.rmtree(out)
        print(f"{backend}: rmio ablate {sweep.name} --jobs {args.jobs} ...", flush=True)
        wall = _run(sweep, out, backend, args.jobs)
        tables[backend] = json.loads((out / "ablation.json").read_text())
        rows.append({"backend": backend, "wall_s": wall})
        print(f"{backend}: {wall / 60:.1f} min", flush=True)
    diffs = _differences(_cells(tables["local"]), _cells(tables["ray"]))
    n_cells = len(_cells(tables["local"]))
    seeds_txt = ",".join(map(str, seeds)) if seeds else "all"
    lines = [
        f"# One sweep, local backend against Ray: {platform.machine()}, {os.cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d')}",
        "",
        f"Command: `python bench/sweep_backends.py {args.sweep} --seeds {seeds_txt} --jobs "
        f"{args.jobs}` (each backend from scratch, one after the other, idle machine; the "
        "sweep's own budget; a local Ray started by the command itself, one CPU per trial).",
        "",
        "| backend | workers | wall min |",
        "|---|---|---|",
    ]
    for r in rows:
        workers = (
            f"{args.jobs} processes"
            if r["backend"] == "local"
            else f"Ray tasks, one CPU each (local Ray, {os.cpu_count()} CPUs)"
        )
        lines.append(f"| {r['backend']} | {workers} | {r['wall_s'] / 60:.1f} |")
    lines += [
        "",
        f"Tables equal: {'yes' if not diffs else 'no'} ({n_cells} numbers compared"
        + (f"; differing: {'; '.join(diffs[:10])}" if diffs else "")
        + ").",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "sweep_backends.md").write_text(text)
    payload = {"sweep": args.sweep, "seeds": seeds, "jobs": args.jobs, "runs": rows}
    payload.update({"numbers_compared": n_cells, "differences": diffs})
    (RESULTS / "sweep_backends.json").write_text(json.dumps(payload, indent=2) + "\n")
    if n_cells == 0:
        sys.exit("the sweep's table holds no numbers: nothing was compared")


if __name__ == "__main__":
    main()
