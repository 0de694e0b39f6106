"""Stand-ins of the two hub repo families whose shipped tasks declare a `train_split` (conf/tasks/*.yaml),
written from the shipped YAML so that each has every split the real repo has, with distinct items per split
(tests/integration/eval/test_shipped_train_splits.py). What the layouts assume is in write_medmnist224's and
write_biomedcoop's docstrings; nothing here downloads.

Each split holds `per_class` items of every class, in its own class order (SPLIT_ORDER), so that a loader
reading the wrong split shows in the labels alone; the image path names the split as well.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import yaml

from tests.helpers.config import REPO
from tests.helpers.eval_hub_repos import image_bytes, write_hf_file

MEDMNIST_SPLITS = ("train", "validation", "test")  # danjacobellis/*mnist_224 (TASKS.md §0.2 [V])
COOP_SPLITS = ("train", "val", "test")  # BiomedCoOp's split_<NAME>.json keys (TASKS.md §0.3 [V-code])
PER_CLASS = {"train": 2, "validation": 1, "val": 1, "test": 1}  # items of each class in each split


def shipped_yaml(name: str) -> dict:
    return yaml.safe_load((REPO / f"conf/tasks/{name}.yaml").read_text())


def split_labels(split: str, n_classes: int) -> list[int]:
    """The labels of a stand-in split in row order: test in class order, train (and val) in reverse
    class order, repeated PER_CLASS times."""
    order = list(range(n_classes)) if split == "test" else list(range(n_classes))[::-1]
    return [c for _ in range(PER_CLASS[split]) for c in order]


def class_colour(k: int, n: int) -> tuple[int, int, int]:
    step = 255 // max(n, 1)
    return (step * k, 255 - step * k, (97 * k) % 256)


def medmnist_features() -> dict:
    """The `datasets` features of a danjacobellis/*mnist_224 split (TASK_AUDIT.md DJ224)."""
    import datasets

    return {
        "path": datasets.Value("string"),
        "label": datasets.Sequence(datasets.Value("uint8")),
        "image": datasets.Image(),
    }


def _card() -> str:
    """What push_to_hub writes: dataset_info (features, splits) and configs naming each split's files."""
    info = {
        "features": [
            {"name": "path", "dtype": "string"},
            {"name": "label", "sequence": "uint8"},
            {"name": "image", "dtype": "image"},
        ],
        "splits": [{"name": s} for s in MEDMNIST_SPLITS],
    }
    configs = [
        {
            "config_name": "default",
            "data_files": [{"split": s, "path": f"data/{s}-*"} for s in MEDMNIST_SPLITS],
        }
    ]
    header = yaml.safe_dump({"dataset_info": info, "configs": configs}, sort_keys=False)
    return f"---\n{header}---\n# stand-in of a danjacobellis/*mnist_224 repo\n"


def write_medmnist224(folder: Path, task: dict) -> None:
    """danjacobellis/<x>mnist_224: parquet shards data/{train,validation,test}-0000i-of-0000n-<hash>.parquet
    as push_to_hub names them, the train split in two shards; columns path (string), label
    (sequence<uint8>, the class at [0]) and image (an Image {bytes, path} struct); a card whose configs
    name each split's files. Assumed, not read from the hub: the shard names and that the card's configs
    list the splits (without configs the loader's data/<split>-* convention finds the same files), and
    that the train split's label column is typed as the test split's (the card's features are per repo)."""
    n, features = len(task["classes"]), medmnist_features()
    for split in MEDMNIST_SPLITS:
        labels = split_labels(split, n)
        columns = {
            "path": [f"{split}/{i}_{c}.png" for i, c in enumerate(labels)],
            "label": [[c] for c in labels],
            "image": [{"bytes": image_bytes(class_colour(c, n), size=16), "path": None} for c in labels],
        }
        shards = (
            [columns] if split != "train" else [_rows(columns, 0, 2 * n // 3), _rows(columns, 2 * n // 3)]
        )
        for i, shard in enumerate(shards):
            name = f"data/{split}-{i:05d}-of-{len(shards):05d}-{7 + i:04x}a.parquet"
            write_hf_file(folder / name, shard, features)
    (folder / "README.md").write_text(_card())


def _rows(columns: dict, start: int, stop: int | None = None) -> dict:
    return {k: v[start:stop] for k, v in columns.items()}


def coop_names(task: dict) -> list[str]:
    """The split JSON's class name of each label: label_map's keys where the YAML maps them, else the
    class itself (the YAMLs without a label_map say the JSON's names are their classes)."""
    raw_by_class = {v: k for k, v in (task["source"].get("label_map") or {}).items()}
    return [raw_by_class.get(name, name) for name in task["classes"]]


def write_biomedcoop(folder: Path, task: dict) -> None:
    """TahaKoleilat/BiomedCoOp's <NAME>.zip and split_<NAME>.json at the repo root, for one task (several
    tasks share one folder, as they share the repo). The JSON is {"train", "val", "test": [[relpath, label,
    classname], ...]}; the relpaths leave out the zip's top folder <NAME>/ (the loader finds it). Assumed,
    not read from the hub: the zip's folder names (<NAME>/<classname>/<file>; the GitHub JSONs' relpaths
    were read, the zips were not) and that train entries have the test entries' shape and class names."""
    source = task["source"]
    top = source["archive"].removesuffix(".zip")
    names, n = coop_names(task), len(task["classes"])
    entries: dict[str, list] = {}
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / source["archive"], "w") as zf:
        for split in COOP_SPLITS:
            entries[split] = []
            for i, c in enumerate(split_labels(split, n)):
                relpath = f"{names[c].replace(' ', '_')}/{split}_{i}.png"
                zf.writestr(f"{top}/{relpath}", image_bytes(class_colour(c, n), size=16))
                entries[split].append([relpath, c, names[c]])
    (folder / source["split_file"]).write_text(json.dumps(entries))


def write_shipped_repos(root: Path, names: list[str]) -> dict[str, Path]:
    """{repo_id: folder} of stand-ins for the shipped tasks `names` (loaders hf_dataset and zip_split_json)."""
    repos: dict[str, Path] = {}
    for name in names:
        task = shipped_yaml(name)
        repo_id, loader = task["source"]["repo_id"], task["source"]["loader"]
        folder = repos.setdefault(repo_id, root / repo_id.replace("/", "--"))
        {"hf_dataset": write_medmnist224, "zip_split_json": write_biomedcoop}[loader](folder, task)
    return repos
