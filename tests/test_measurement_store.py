"""The shared measurement store: atomic concurrent writes, corrupt entries remeasured, a warm pass all hits."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from splitlab.envs import LiveLLMRewardModel
from splitlab.llm.measurement_store import MeasurementStore, measurement_key, resolve_store


WRITER = """
import importlib.util, sys
# the module alone, without splitlab.llm's torch import: two writers start in a second, not a minute
spec = importlib.util.spec_from_file_location("measurement_store", sys.argv[2])
ms = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ms)
MeasurementStore, measurement_key = ms.MeasurementStore, ms.measurement_key
store = MeasurementStore(sys.argv[1])
for rep in range(3):
    for i in range(40):
        store.put(measurement_key(metric="ppl", k=i % 5, value=float(i)), 100.0 + i)
"""


def test_two_processes_write_the_same_points_safely(tmp_path):
    import splitlab.llm.measurement_store as ms

    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), ms.__file__]) for _ in range(2)]
    assert [p.wait(120) for p in procs] == [0, 0]
    store = MeasurementStore(str(tmp_path))
    assert [store.get(measurement_key(metric="ppl", k=i % 5, value=float(i))) for i in range(40)] == \
        [100.0 + i for i in range(40)]
    assert store.stats()["store/hit_rate"] == 1.0 and store.corrupt == 0
    assert not list(tmp_path.rglob("*.tmp-*"))  # every temporary file was renamed into place
    assert len(list(tmp_path.rglob("*.json"))) == 40


def test_corrupt_entries_read_as_misses(tmp_path):
    store = MeasurementStore(str(tmp_path))
    key = measurement_key(metric="ppl", k=1, value=2.0)
    store.put(key, 12.5)
    path = Path(store.path(key))
    entry = json.loads(path.read_text())
    path.write_text(json.dumps({**entry, "value": 13.0}))  # checksum no longer matches
    assert store.get(key) is None and store.corrupt == 1
    path.write_text("{not json")
    assert store.get(key) is None and store.corrupt == 2
    store.put(key, 12.5)
    assert store.get(key) == 12.5
    assert store.get(measurement_key(metric="ppl", k=2, value=2.0)) is None  # a plain miss is not corrupt
    assert store.corrupt == 2


def test_resolve_store(tmp_path, monkeypatch):
    assert resolve_store(None) is None
    assert resolve_store("s3://bucket/m") == "s3://bucket/m"
    monkeypatch.setenv("SPLITLAB_MEASUREMENTS", str(tmp_path / "m"))
    assert resolve_store("auto") == str(tmp_path / "m")
    monkeypatch.delenv("SPLITLAB_MEASUREMENTS")
    monkeypatch.chdir(tmp_path)
    assert resolve_store("auto") == str(tmp_path / "runs" / "measurements")


def test_live_model_reads_and_writes_through_the_store(tiny_llama, tmp_path):
    kwargs = dict(channel={"kind": "awgn"}, n_tokens=96, window=32, decimals=0, store=str(tmp_path))
    cold = LiveLLMRewardModel(tiny_llama, **kwargs)
    first = [cold.ppl_clean, cold.quality(2, 5.0), *cold.quality_grid([0, 3], [0.0, 10.0])[1]]
    assert cold.real_evals == 6 and cold.store.hits == 0 and cold.store.writes == 6
    warm = LiveLLMRewardModel(tiny_llama, **kwargs)
    second = [warm.ppl_clean, warm.quality(2, 5.0), *warm.quality_grid([0, 3], [0.0, 10.0])[1]]
    assert second == first  # identical numbers from the store
    # the same budget of real measurements, none of them computed here
    assert warm.real_evals == 6 and warm.stats()["store/hit_rate"] == 1.0 and warm.store.hits == 6
    assert warm.store.writes == 0 and warm.real_eval_time_s < cold.real_eval_time_s
    # quality and quality_grid key a point alike: the grid's (3, 10.0) is the point quality measures
    assert warm.quality(3, 10.0) == first[-1] and warm.real_evals == 6
    # a corrupted entry is remeasured (same seed: same number) and rewritten
    path = Path(warm.store.path(warm.store_key((2, 5.0))))
    path.write_text("garbage")
    again = LiveLLMRewardModel(tiny_llama, **kwargs)
    assert again.quality(2, 5.0) == pytest.approx(first[1], rel=1e-6)
    assert again.real_evals == 1 and again.store.corrupt == 1 and again.store.writes == 1
    # another seed is another point
    other = LiveLLMRewardModel(tiny_llama, **{**kwargs, "seed": 1})
    other.quality(2, 5.0)
    assert other.real_evals == 1 and other.store.misses == 1


def test_a_sweep_shares_one_store_under_its_storage_path(monkeypatch):
    from splitlab.platform.sweep import measurements_root

    monkeypatch.delenv("SPLITLAB_MEASUREMENTS")
    assert measurements_root("s3://bucket/sweeps/network-sweep") == "s3://bucket/sweeps/measurements"
    assert measurements_root("/nfs/sweeps/network-sweep") == "/nfs/sweeps/measurements"
    monkeypatch.setenv("SPLITLAB_MEASUREMENTS", "/shared/m")
    assert measurements_root("/nfs/sweeps/network-sweep") == "/shared/m"
