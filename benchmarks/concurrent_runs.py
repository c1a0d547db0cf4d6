"""Two identical ``saebench run`` commands started together into one --out and one fresh cache.

Prints the CPU seconds (user + sys) each process spent, what each did (``wrote`` or ``kept``),
and the ratio second/first: with the result locks the second waits and reuses the first's result
instead of computing everything again. Prints, never asserts.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/concurrent_runs.py --tokens 4096

Run it against another checkout with ``PYTHONPATH=OTHER_SRC`` to compare (the children inherit it).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import empty_activation_cache


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--sae", default="reference")
    a = ap.parse_args()
    args = ["run", "--sae", a.sae, "--tokens", str(a.tokens), "--quiet", "--threads", "1"]
    with empty_activation_cache() as cache, tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "SAEBENCH_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-m", "saebench.cli", *args, "--out", str(Path(tmp) / "out")]
        t0 = time.perf_counter()
        procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
        cpu = {}
        for _ in procs:
            pid, status, usage = os.wait4(-1, 0)
            cpu[pid] = usage.ru_utime + usage.ru_stime
        wall = time.perf_counter() - t0
        rows = []
        for i, p in enumerate(procs, 1):
            out = p.stdout.read().decode()
            did = "kept (reused)" if "kept" in out else "wrote (computed)" if "wrote" in out else "failed"
            rows.append((cpu[p.pid], did))
            print(f"run {i}: {cpu[p.pid]:6.1f} s CPU, {did}")
        first, second = sorted(c for c, _ in rows)[::-1]
        print(f"pair wall {wall:.1f} s; CPU of the cheaper run / the other = {second / first:.3f}")
        print(f"torch threads per run: 1; sae {a.sae}; tokens {a.tokens}")


if __name__ == "__main__":
    main()
