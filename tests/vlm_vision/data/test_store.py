"""The memory-mapped record store: the same records as reading the files, cached by file identity, flat workers."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from vlm_vision.errors import InputError
from vlm_vision.data.files import load_rows
from vlm_vision.data.resume import check_data_files
from vlm_vision.data.scan import LazyRecords
from vlm_vision.data.formats import MediaRoots
from vlm_vision.data.store import RecordStore, iter_json_list, open_store


def _turns(i):
    return [{"from": "human", "value": f"question {i} é ☃"}, {"from": "gpt", "value": f"answer {i}"}]


@pytest.mark.parametrize("chunk", [3, 7, 64, 1 << 20])
def test_a_json_list_read_in_chunks_gives_each_element_text_exactly(tmp_path, chunk):
    items = [{"id": "a", "x": [1, 2, {"y": "]["}]}, 12345, "s,t]", {"id": "b", "n": 1.5e10}, [], None, 7]
    path = tmp_path / "l.json"
    path.write_text(" [\n " + " ,\n".join(json.dumps(x) for x in items) + " \n]\n", encoding="utf-8")
    assert [json.loads(t) for t in iter_json_list(path, chunk=chunk)] == items
    (tmp_path / "e.json").write_text("[]")
    assert list(iter_json_list(tmp_path / "e.json", chunk=chunk)) == []


@pytest.mark.parametrize("text, message", [('{"a": 1}', "JSON list"), ('[{"a": 1} {"b": 2}]', "expected ','"),
                                           ('[{"a": 1}, {"b": ]', "not valid JSON")])
def test_a_file_that_is_not_a_json_list_is_refused_naming_it(tmp_path, text, message):
    (tmp_path / "bad.json").write_text(text)
    with pytest.raises(ValueError, match=message):
        list(iter_json_list(tmp_path / "bad.json", chunk=4))


def test_the_store_holds_the_records_of_a_mixture_as_reading_the_files_does(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.json").write_text(json.dumps([{"id": f"a{i}", "conversations": _turns(i)} for i in range(9)]))
    lines = [json.dumps({"id": f"b{i}", "conversations": _turns(i)}) for i in range(6)]
    lines[2] = "{not json"
    (tmp_path / "d" / "b.jsonl").write_text("\n".join(lines[:3]) + "\n\n" + "\n".join(lines[3:]) + "\n")
    (tmp_path / "mix.yaml").write_text("datasets:\n  - json_path: d/a.json\n    sampling_strategy: random:5\n"
                                       "  - json_path: d/b.jsonl\n")
    for seed in (0, 1):
        rows, store = load_rows(tmp_path / "mix.yaml", seed), open_store(tmp_path / "mix.yaml", tmp_path / "c", seed=seed)
        assert len(store) == len(rows) == 11
        for i in range(len(rows)):
            assert store.raw(i) == rows.raw(i) and store.source(i) == rows.source(i)
            assert store.data_dir(i) == rows.data_dir(i)
    assert len(list((tmp_path / "c").glob("store-*.arrow"))) == 1  # one store for every seed and strategy
    assert store.source(7) == "b.jsonl:3" and "line 3 is not valid JSON" in store.raw(7).reason


def test_the_store_is_built_once_and_again_when_a_file_changes(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"id": "x", "conversations": _turns(0)}]))
    first = open_store(path, tmp_path / "c")
    built = first.path.stat().st_mtime_ns
    again = open_store(path, tmp_path / "c", build=False)
    assert again.path == first.path and again.path.stat().st_mtime_ns == built
    path.write_text(json.dumps([{"id": "y", "conversations": _turns(1)}]))
    with pytest.raises(FileNotFoundError, match="not built by the main process"):
        open_store(path, tmp_path / "c", build=False)
    assert open_store(path, tmp_path / "c").raw(0)["id"] == "y"


def test_a_resume_on_a_changed_data_file_stops_naming_the_file(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"id": "x", "conversations": _turns(0)}]))
    record = tmp_path / "run" / "data-files.json"
    check_data_files(path, record, resume=False, write=True)
    check_data_files(path, record, resume=True, write=True)  # unchanged: resumes
    path.write_text(json.dumps([{"id": "x", "conversations": _turns(1)}]))
    with pytest.raises(InputError, match=r"data file changed since the run began .*a\.json.*source_fingerprint"):
        check_data_files(path, record, resume=True, write=True)
    check_data_files(path, record, resume=False, write=True)  # a new run records the new file


class _Parse(torch.utils.data.Dataset):
    def __init__(self, records):
        self.records = records

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return len(self.records[i].messages)


def _private(pid: int) -> dict[str, int]:
    """Anonymous and Private_Dirty bytes of a process (smaps_rollup)."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("Anonymous", "Private_Dirty"):
                out[key] = int(rest.split()[0]) * 1024
    return out


@pytest.mark.slow
def test_dataloader_workers_stay_flat_over_a_full_pass_of_100k_records(tmp_path):
    """Each worker indexes (parses) its share of 100,000 records; its private memory must not grow with them
    (Python dicts held in the parent would be copied page by page: ~100 MB per worker here)."""
    (tmp_path / "v.mp4").write_bytes(b"\0")
    n = 100_000
    with open(tmp_path / "train.json", "w") as f:
        f.write("[" + ",".join(json.dumps({"id": f"r{i}", "video": "v.mp4", "conversations": [
            {"from": "human", "value": "<image>\n" + "a caption word " * 20}, {"from": "gpt", "value": f"ok {i}"}]})
            for i in range(n)) + "]")
    store = open_store(tmp_path / "train.json", tmp_path / "cache")
    assert isinstance(store, RecordStore)
    records = LazyRecords(store, np.arange(n), MediaRoots())
    loader = torch.utils.data.DataLoader(_Parse(records), batch_size=500, num_workers=2, persistent_workers=True,
                                         collate_fn=len, multiprocessing_context="fork")
    it = iter(loader)
    seen = next(it)
    pids = [w.pid for w in it._workers]
    before = [_private(p) for p in pids]
    seen += sum(it)
    after = [_private(p) for p in pids]
    assert seen == n
    for b, a in zip(before, after):
        for key in ("Anonymous", "Private_Dirty"):
            assert a[key] - b[key] < 16 * 2**20, (key, b, a, os.getpid())
