"""The data package in layers (issue 13: "data/: sources, stream, loader and http apart"): each module
imports only data modules of a lower layer, so HTTP knows nothing of listing, listing nothing of streams,
a stream nothing of torch's DataLoader. Sizes and cycles: tests/unit/test_structure.py."""

from __future__ import annotations

import ast
from pathlib import Path

import bmca_clip.data

DATA = Path(bmca_clip.data.__file__).parent

# Lower numbers are imported by higher ones, never the other way. A new module is placed here on purpose.
LAYERS = {
    "biomedica": 0,  # the sample format's names
    "counters": 0,  # DataCounters
    "auth": 0,  # which credentials a request carries
    "decode": 0,  # one sample's members -> (image, caption); to_rgb8
    "mixing": 0,  # source draws and weight shares
    "elastic": 0,  # logical streams over ranks and workers
    "synthetic_figures": 0,  # procedural figures and captions
    "predicates": 1,  # what filters and balancing do to one sample
    "filters": 2,  # their config dataclasses (validated through predicates)
    "http": 1,  # retry policy, ShardReader
    "transforms": 1,  # the fast train/eval transforms
    "health": 1,  # skip reasons, the bad-data limit
    "pool": 1,  # shards in flight: slots round robin, their position
    "synthetic_corpus": 1,  # training shards of the synthetic corpus
    "synthetic_eval": 1,  # its eval sets
    "hub": 2,  # listing and manifests
    "shards": 2,  # a shard's bytes: file, cache or HTTP
    "tables": 2,  # parquet files and CSV chunks as samples
    "sources": 3,  # named sources -> shard URLs and probabilities
    "stream": 4,  # one stream: read, filter, shuffle, mix, decode
    "heldout": 4,  # the validation pairs of the held-out shards, in a fixed order
    "loader": 5,  # batches, workers, resume state
    "synthetic": 2,  # write_corpus and its command line
}


def _data_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bmca_clip.data"):
            if node.module == "bmca_clip.data":
                found.update(alias.name for alias in node.names)
            else:
                found.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[2] for a in node.names if a.name.startswith("bmca_clip.data."))
    return found


def _modules() -> dict[str, Path]:
    return {p.stem: p for p in DATA.glob("*.py") if p.stem != "__init__"}


def test_every_data_module_has_a_layer():
    assert sorted(_modules()) == sorted(LAYERS)


def test_data_modules_import_only_lower_layers():
    upward = [
        f"{name} (layer {LAYERS[name]}) imports {dep} (layer {LAYERS[dep]})"
        for name, path in _modules().items()
        for dep in sorted(_data_imports(path))
        if LAYERS[dep] >= LAYERS[name]
    ]
    assert upward == []


def test_only_the_loader_uses_torchs_dataloader_and_only_hub_lists_the_hub():
    for name, path in _modules().items():
        text = path.read_text()
        assert ("torch.utils.data" in text) == (name == "loader"), name
        assert ("HfApi" in text) == (name == "hub"), name
