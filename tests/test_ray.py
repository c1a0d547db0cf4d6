"""--ray: a sweep over a local Ray cluster equals the single-process run, survives a killed worker
(its job rerun, nothing written twice or lost) and a rerun skips what is done.

Skipped when ray is not installed (``pip install 'saebench[ray]'``). Uses a small random GPT-2
(tests/test_models_families.py) shipped to the actors through Ray's object store, so the actors
start in seconds and need no model files.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
from conftest import write_native
from test_models_families import build_model, random_tokens

from saebench import evaluate

ray = pytest.importorskip("ray")

HOOK = "blocks.1.hook_resid_post"

SLOW = '''
import os, time
from pathlib import Path
from saebench.evaluators import EvalConfig, EvalOutput, Metric


class Slow:
    """Sleeps on its first call ever (one per marker folder), after writing its process id."""

    name = "slow"
    needs = frozenset()
    metrics = (Metric("calls", "1 per call"),)

    class Config(EvalConfig):
        marker: str = ""

    def run(self, ctx, cfg):
        try:
            fd = os.open(os.path.join(cfg.marker, "claimed"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return EvalOutput({"calls": 1})
        os.close(fd)
        Path(cfg.marker, "pid").write_text(str(os.getpid()))
        time.sleep(300)
        return EvalOutput({"calls": 1})
'''


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def test_killed_worker_is_replaced_and_results_equal_single_process(cluster, tmp_path, cache_env):
    from saebench.distributed import evaluate_ray

    model = build_model("gpt2")
    tokens = random_tokens(n_seq=8, ctx_len=24)
    specs = [
        str(write_native(tmp_path / f"sae{i}", arch="topk", d_in=32, d_sae=48, seed=i, hook_name=HOOK)[0])
        for i in range(3)
    ]
    common = dict(model=model, hook=HOOK, token_set=tokens, batch_size=4, progress=False)

    plugin = tmp_path / "slow.py"
    plugin.write_text(SLOW)
    marker = tmp_path / "marker"
    marker.mkdir()
    out = tmp_path / "ray"
    kw = dict(evals=["core", f"python:{plugin}:Slow"], eval_config={"slow": {"marker": str(marker)}}, out=out, **common)
    box: dict = {}

    def drive() -> None:
        try:
            box["run"] = evaluate_ray(specs, workers=2, **kw)
        except BaseException as exc:  # handed to the test thread
            box["error"] = exc

    t = threading.Thread(target=drive)
    t.start()
    deadline = time.time() + 180
    while not (marker / "pid").is_file() and time.time() < deadline and t.is_alive():
        time.sleep(0.2)
    assert (marker / "pid").is_file(), box.get("error")
    time.sleep(0.3)
    before = {p: p.stat().st_ino for p in out.rglob("*.json")}  # complete before the kill
    assert before  # the sleeping job's SAE already has its core result
    os.kill(int((marker / "pid").read_text()), signal.SIGKILL)
    t.join(timeout=240)
    assert not t.is_alive() and "error" not in box, box.get("error")
    run = box["run"]
    assert len(run.distributed["reruns"]) == 1 and run.distributed["workers"] == 2
    for p, ino in before.items():
        assert p.stat().st_ino == ino, f"{p} was written twice"
    names = [s.rsplit("/", 1)[-1] for s in specs]
    single = evaluate(specs, evals=["core"], out=tmp_path / "single", **common)
    for n in names:
        assert (out / n / "core.json").is_file() and (out / n / "slow.json").is_file()
        assert run.results[n]["core"].metrics == single.results[n]["core"].metrics
    c = run.counters[HOOK]
    # the hook was prepared once (8 contexts / 4): the other and the restarted worker read the cache.
    # Ablation baselines ride in the first splice loop of whichever job splices first; when that was
    # the killed job its counters died with it (the entry it cached is what the others read).
    assert c.prefix_batches == 2 and c.ablation_batches in (0, 2)
    assert c.spliced_suffix_batches >= 4  # what the killed job spliced before dying is not reported

    again = evaluate_ray(specs, workers=2, **kw)  # a rerun skips everything, starts no worker
    assert sorted(again.skipped) == sorted((n, e) for n in names for e in ("core", "slow"))
    assert not again.distributed


def test_an_error_in_a_worker_is_one_line(cluster, tmp_path, cache_env):
    from saebench.distributed import evaluate_ray
    from saebench.errors import SaebenchError

    spec = str(
        write_native(tmp_path / "wide", arch="relu", d_in=40, d_sae=16, hook_name=HOOK)[0]
    )  # the model is 32 wide
    with pytest.raises(SaebenchError, match=r"SAE wide has d_in=40 but hook .* has width 32; pass the hook"):
        evaluate_ray(
            spec,
            workers=1,
            model=build_model("gpt2"),
            hook=HOOK,
            token_set=random_tokens(),
            batch_size=4,
            out=tmp_path / "out",
            progress=False,
        )


def test_missing_ray_is_a_one_line_error(monkeypatch):
    import builtins

    from saebench.distributed import _ray
    from saebench.errors import SaebenchError

    real = builtins.__import__

    def fake(name, *a, **k):
        if name == "ray":
            raise ImportError("no ray")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(SaebenchError, match=r"pip install 'saebench\[ray\]'"):
        _ray()
