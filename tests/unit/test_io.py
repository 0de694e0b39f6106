"""The contract of bmca_clip/io.py (issue 13, item 6): atomic writes leave the old file whole when a write
fails midway, canonical-JSON hashes do not depend on key order, every precision a config accepts has its
dtypes, and "is this our checkpoint" answers the same for every caller."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from bmca_clip import io as bio
from bmca_clip.checkpoint import CheckpointError, atomic_torch_save, load_checkpoint
from bmca_clip.config import PRECISIONS, EvaluateConfig
from bmca_clip.wise_ft import read_bmca_checkpoint


class Boom(Exception):
    pass


def test_atomic_write_replaces_the_whole_file(tmp_path):
    path = tmp_path / "a.json"
    bio.atomic_write(path, "old\n")
    bio.atomic_write(path, b"new bytes")
    assert path.read_bytes() == b"new bytes"
    bio.atomic_write(path, "text ü\n")
    assert path.read_text(encoding="utf-8") == "text ü\n"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_an_error_mid_write_leaves_the_old_file_and_no_tmp(tmp_path):
    path = tmp_path / "step.pt"
    path.write_bytes(b"the old checkpoint")
    with pytest.raises(Boom), bio.atomic_writer(path, "wb", fsync=True) as f:
        f.write(b"half of the new")
        raise Boom
    assert path.read_bytes() == b"the old checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["step.pt"]


def test_a_process_killed_mid_write_leaves_the_old_file(tmp_path):
    # A crash, not an exception: no cleanup runs. The old file stays whole; what remains is a tmp file.
    path = tmp_path / "config.yaml"
    path.write_text("old: 1\n")
    script = f"""
        import os
        from bmca_clip.io import atomic_writer
        with atomic_writer({str(path)!r}, "w") as f:
            f.write("new: half")
            f.flush()
            os._exit(9)
    """
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    assert path.read_text() == "old: 1\n"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "config.yaml"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".config.yaml.") and leftovers[0].endswith(".tmp")


def test_a_named_tmp_is_used_and_removed_on_failure(tmp_path):
    # checkpoint.py names its tmp file so that remove_stale_tmp finds one a killed run left.
    path, tmp = tmp_path / "step_00000001.pt", tmp_path / ".step_00000001.pt.tmp77"
    with pytest.raises(Boom), bio.atomic_writer(path, "wb", tmp=tmp) as f:
        assert f.name == str(tmp)
        raise Boom
    assert list(tmp_path.iterdir()) == []
    atomic_torch_save({"model": {"w": torch.ones(2)}, "step": 1}, path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_canonical_hash_is_stable_across_key_order():
    a = {"task": "pcam", "model": {"name": "ViT-B-16", "alpha": 0.5}, "seeds": [1, 2]}
    b = {"seeds": [1, 2], "model": {"alpha": 0.5, "name": "ViT-B-16"}, "task": "pcam"}
    assert bio.sha256_json(a) == bio.sha256_json(b)
    assert bio.canonical_json(a) == b'{"model":{"alpha":0.5,"name":"ViT-B-16"},"seeds":[1,2],"task":"pcam"}'
    assert bio.sha256_json(a) != bio.sha256_json({**a, "seeds": [2, 1]})  # list order is content
    assert len(bio.sha256_json(a)) == 64


def test_the_result_config_hash_is_the_canonical_hash():
    # eval/report.py's config_hash decides whether a stored result is reused: it must not change.
    import hashlib
    import json

    from bmca_clip.eval.report import config_hash

    config = {"b": 1, "a": {"path": "x", "n": [1, 2]}}
    expected = hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert config_hash(config) == expected


def test_dtype_maps_cover_every_precision():
    eval_precisions = ("fp32", "amp_bf16", "amp_fp16")
    EvaluateConfig(precision=eval_precisions[-1])  # the eval schema accepts these
    for precision in {*PRECISIONS, *eval_precisions}:
        bio.autocast_dtype(precision)
        bio.weight_dtype(precision)
    assert [bio.autocast_dtype(p) for p in ("fp32", "amp_bf16", "amp_fp16", "pure_bf16")] == [
        None,
        torch.bfloat16,
        torch.float16,
        None,
    ]
    assert bio.weight_dtype("pure_bf16") is torch.bfloat16
    assert {bio.weight_dtype(p) for p in ("fp32", "amp_bf16", "amp_fp16")} == {torch.float32}
    with pytest.raises(ValueError, match="precision='fp8'"):
        bio.autocast_dtype("fp8")


def test_autocast_runs_in_the_dtype_or_not_at_all():
    x = torch.ones(2, 2)
    with bio.autocast(torch.device("cpu"), torch.bfloat16):
        assert (x @ x).dtype is torch.bfloat16
    with bio.autocast("cpu", None):
        assert (x @ x).dtype is torch.float32


def test_library_versions_name_the_three_libraries():
    import open_clip

    import bmca_clip

    versions = bio.library_versions()
    assert versions == {
        "bmca_clip": bmca_clip.__version__,
        "torch": str(torch.__version__),
        "open_clip": open_clip.__version__,
    }


@pytest.mark.parametrize(
    ("obj", "ours"),
    [
        ({"model": {"w": torch.ones(1)}, "step": 3, "config": {}}, True),
        ({"model": {}, "step": 0}, True),
        ({"state_dict": {"w": torch.ones(1)}}, False),  # an open_clip file
        ({"w": torch.ones(1)}, False),  # a bare state dict
        ({"model": {"w": torch.ones(1)}}, False),  # no step
        ({"model": torch.ones(1), "step": 3}, False),  # model is not a state dict
        ({"model": {}, "step": "3"}, False),
        ({"model": {}, "step": True}, False),
        ([1, 2], False),
    ],
)
def test_every_caller_agrees_on_what_our_checkpoint_is(tmp_path, obj, ours):
    path = tmp_path / "ckpt.pt"
    torch.save(obj, path)
    assert bio.is_bmca_checkpoint(obj) is ours
    assert (read_bmca_checkpoint(str(path)) is not None) is ours  # wise_ft / eval
    if ours:
        assert load_checkpoint(path)["step"] == obj["step"]  # resume
    else:
        with pytest.raises(CheckpointError, match="not a bmca-clip training checkpoint"):
            load_checkpoint(path)


def test_io_imports_no_heavy_library():
    script = "import sys, bmca_clip.io; print(sorted({'torch', 'open_clip'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
