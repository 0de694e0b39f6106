"""Stand-ins for the hub datasets the eval loaders read, written in their real layouts (parquet/arrow files
with a dataset card, WebDataset tars, uBench's label file), for FakeHub to serve. Nothing here downloads."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

from PIL import Image

from tests.helpers.eval_fixtures import COLOR_NAMES, COLORS

# Stand-in hub repos, in the layouts the hub loaders read (served by tests/integration/eval/test_loader_*.py).
SKIN_TEST = [0, 1, 2, 3, 0, 1, 2, 3]  # class index of each test row of org/skin
SKIN_DX = ["Red_Square", "green-square", "BLUE  square", "yellow_square"]  # string labels, by class
UBENCH_ROWS = [  # dataset, stain, label_name, modality answer, stain question present
    ("hussain_et_al_2019", "Papanicolaou", "negative-nilm", 0, True),
    ("hussain_et_al_2019", "Papanicolaou", "high-grade-hsil", 0, True),
    (None, "H2B-mCherry", "metaphase", 1, True),
    (None, "H2B-mCherry", "prophase", 1, True),
    (None, "GalT–EGFP", "golgi_twin", 1, False),
    ("wu_et_al_2023", "none", "abnormal", 2, False),
]
MODALITY_OPTIONS = ["light microscopy", "fluorescence microscopy", "electron microscopy", "none of the above"]
STAIN_OPTIONS = ["H&E", "Papanicolaou", "H2B-mCherry", "none of the above"]
CHOLEC_MASKS = [["#ff0000", "#00ff00"], ["#0000ff"], ["#ff0000"], []]  # colours present in each mask
CHOLEC_MAP = {"#ff0000": "liver", "#00ff00": "fat", "#0000ff": "grasper", "#ffff00": "blood"}


def image_bytes(color: tuple[int, int, int], size: int = 24, fmt: str = "PNG") -> bytes:
    """Encoded bytes of a write_image-style picture: a coloured square on grey."""
    buf = io.BytesIO()
    img = Image.new("RGB", (size, size), (128, 128, 128))
    img.paste(color, (size // 4, size // 4, 3 * size // 4, 3 * size // 4))
    img.save(buf, format=fmt)
    return buf.getvalue()


def write_hf_file(path: Path, columns: dict, features: dict) -> None:
    """A parquet file, or an arrow IPC stream (.arrow, as datasets' shards), as `datasets` writes them:
    Image columns as {bytes, path} structs, ClassLabel names in the schema's metadata."""
    import datasets
    import pyarrow as pa

    path.parent.mkdir(parents=True, exist_ok=True)
    ds = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
    if path.suffix == ".parquet":
        ds.to_parquet(str(path))
        return
    table = ds.data.table
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)


def _skin_columns(classes: list[int]) -> dict:
    return {
        "image": [{"bytes": image_bytes(list(COLORS.values())[c]), "path": None} for c in classes],
        "label": classes,
        "dx": [SKIN_DX[c] for c in classes],
        "flag": [c % 2 == 1 for c in classes],
        "seq": [[c, 9] for c in classes],
        "organ": [int(c >= 2) for c in classes],
    }


def _skin_features():
    import datasets

    return {
        "image": datasets.Image(),
        "label": datasets.ClassLabel(names=COLOR_NAMES),
        "dx": datasets.Value("string"),
        "flag": datasets.Value("bool"),
        "seq": datasets.Sequence(datasets.Value("uint8")),
        "organ": datasets.ClassLabel(names=["lung", "colon"]),
    }


SKIN_CARD = """---
license: cc-by-4.0
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
  - split: test
    path: data/test-*
---
# stand-in
"""


def make_hub_repos(root: Path) -> dict[str, tuple[Path, str]]:
    """Folders to serve as hub dataset repos: {repo_id: (folder, revision)}; one per layout a loader reads."""
    import datasets

    repos = {}
    skin = root / "skin"
    write_hf_file(skin / "data/test-00000-of-00001.parquet", _skin_columns(SKIN_TEST), _skin_features())
    write_hf_file(skin / "data/train-00000-of-00001.parquet", _skin_columns([0, 1, 2]), _skin_features())
    (skin / "README.md").write_text(SKIN_CARD)
    repos["org/skin"] = (skin, "main")
    converted = root / "skin-parquet"  # what the hub's parquet converter writes on refs/convert/parquet
    write_hf_file(converted / "default/test/0000.parquet", _skin_columns([3, 2, 1]), _skin_features())
    repos["org/skin@refs/convert/parquet"] = (converted, "refs/convert/parquet")

    nct = root / "nct"  # a loading script beside parquet shards of several subsets
    nine = {"image": datasets.Image(), "label": datasets.ClassLabel(names=[f"c{i}" for i in range(9)])}
    for name, labels in [
        ("CRC_VAL_HE_7K-00000-of-00002", [0, 8, 4]),
        ("CRC_VAL_HE_7K-00001-of-00002", [5, 1]),
    ]:
        cols = {
            "image": [{"bytes": image_bytes((20 * i, 0, 0)), "path": None} for i in labels],
            "label": labels,
        }
        write_hf_file(nct / f"data/{name}.parquet", cols, nine)
    cols = {"image": [{"bytes": image_bytes((0, 0, 0)), "path": None}] * 4, "label": [0, 0, 0, 0]}
    write_hf_file(nct / "data/NCT_CRC_HE_100K-00000-of-00001.parquet", cols, nine)
    (nct / "NCT-CRC-HE.py").write_text("# a loading script: datasets>=4 refuses it\n")
    repos["org/nct"] = (nct, "main")

    coop = root / "coop"  # BiomedCoOp: images under a top folder the split JSON's paths leave out
    coop.mkdir()
    entries = {"train": [], "val": [], "test": []}
    with zipfile.ZipFile(coop / "BTMRI.zip", "w") as zf:
        for i, (label, name) in enumerate(
            [(0, "glioma"), (1, "meningioma"), (2, "pituitary"), (0, "glioma")]
        ):
            zf.writestr(f"BTMRI/{name}/{i}.png", image_bytes(list(COLORS.values())[label]))
            entries["test" if i != 1 else "train"].append([f"{name}/{i}.png", label, name])
    (coop / "split_BTMRI.json").write_text(json.dumps(entries))
    repos["org/coop"] = (coop, "main")

    wds = write_wds_repo(root / "wds", [[0, 1, 2], [3, 0]], COLOR_NAMES)  # CLIP_benchmark's eval layout
    repos["org/wds"] = (wds, "main")

    repos["org/ubench"] = (_make_ubench(root / "ubench"), "main")
    repos["org/cholec"] = (_make_cholec(root / "cholec"), "main")
    repos["org/parasites"] = (_make_parasites(root / "parasites"), "main")
    return repos


def _question(text: str, options: list[str], answer: int) -> dict:
    return {"question": text, "options": options, "answer": answer}


def _make_ubench(folder: Path) -> Path:
    """µ-Bench's layout: arrow shards under perception/0.1.0/, Held et al. rows with dataset None."""
    import datasets

    q = {"question": datasets.Value("string"), "options": datasets.Sequence(datasets.Value("string"))}
    q["answer"] = datasets.Value("int64")
    features = {
        "image": datasets.Image(),
        "label_name": datasets.Value("string"),
        "dataset": datasets.Value("string"),
        "stain": datasets.Value("string"),
        "questions": {"modality": q, "stain": q},
    }
    rows = []
    for i, (dataset, stain, label, modality, has_stain) in enumerate(UBENCH_ROWS):
        questions = {
            "modality": _question("What is the imaging modality?", MODALITY_OPTIONS, modality),
            "stain": _question("Which stain is shown?", STAIN_OPTIONS, i % 3) if has_stain else None,
        }
        colour = list(COLORS.values())[i % 4]
        rows.append(({"bytes": image_bytes(colour), "path": None}, label, dataset, stain, questions))
    for shard, part in enumerate([rows[:4], rows[4:]]):
        names = ["image", "label_name", "dataset", "stain", "questions"]
        columns = {n: [r[k] for r in part] for k, n in enumerate(names)}
        write_hf_file(folder / f"perception/0.1.0/ubench-test-0000{shard}-of-00002.arrow", columns, features)
    (folder / "perception/0.1.0/dataset_info.json").write_text("{}")
    (folder / "README.md").write_text("---\nlicense: cc-by-sa-4.0\n---\n")
    return folder


def _make_cholec(folder: Path) -> Path:
    """Frames with RGB segmentation masks (CholecSeg8k-like): colours in CHOLEC_MASKS."""
    import datasets

    images, masks = [], []
    for i, colours in enumerate(CHOLEC_MASKS):
        images.append({"bytes": image_bytes(list(COLORS.values())[i % 4]), "path": None})
        mask = Image.new("RGB", (16, 16), (0, 0, 0))
        for k, colour in enumerate(colours):
            mask.paste(tuple(int(colour[j : j + 2], 16) for j in (1, 3, 5)), (4 * k, 0, 4 * k + 4, 4))
        buf = io.BytesIO()
        mask.save(buf, format="PNG")
        masks.append({"bytes": buf.getvalue(), "path": None})
    features = {"image": datasets.Image(), "label": datasets.Image()}
    write_hf_file(folder / "data/test-00000-of-00001.parquet", {"image": images, "label": masks}, features)
    return folder


def _make_parasites(folder: Path) -> Path:
    """Detection rows (RF100-like): objects {bbox [x, y, w, h], category}, category 0 the superclass."""
    import datasets

    picture = Image.new("RGB", (64, 64), (128, 128, 128))
    picture.paste(COLORS["red"], (0, 0, 32, 32))
    picture.paste(COLORS["blue"], (32, 32, 64, 64))
    buf = io.BytesIO()
    picture.save(buf, format="PNG")
    objects = [
        {"bbox": [[0, 0, 32, 32], [32, 32, 32, 32], [10, 10, 5, 5]], "category": [1, 2, 0]},
        {"bbox": [[40, 40, 16, 16]], "category": [2]},
    ]
    features = {
        "image": datasets.Image(),
        "objects": datasets.Sequence(
            {
                "bbox": datasets.Sequence(datasets.Value("float32"), length=4),
                "category": datasets.ClassLabel(names=["parasites", "ascaris", "taenia"]),
            }
        ),
    }
    columns = {"image": [{"bytes": buf.getvalue(), "path": None}] * 2, "objects": objects}
    write_hf_file(folder / "data/test-00000-of-00001.parquet", columns, features)
    return folder


def write_wds_repo(
    folder: Path, shards: list[list[int]], classnames: list[str], image_key: str = "webp"
) -> Path:
    """CLIP_benchmark's eval layout: test/<i>.tar of samples {image_key, cls}, classnames.txt at the root;
    shards lists each shard's labels."""
    fmt = {"webp": "WEBP", "png": "PNG", "jpg": "JPEG"}[image_key]
    index = 0
    (folder / "test").mkdir(parents=True, exist_ok=True)
    for shard, labels in enumerate(shards):
        with tarfile.open(folder / f"test/{shard}.tar", "w") as tar:
            for label in labels:
                colour = list(COLORS.values())[label % len(COLORS)]
                for ext, data in [(image_key, image_bytes(colour, fmt=fmt)), ("cls", str(label).encode())]:
                    info = tarfile.TarInfo(f"s{index:04d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                index += 1
    (folder / "classnames.txt").write_text("\n".join(classnames) + "\n")
    (folder / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\n")
    return folder


UBENCH_COMMIT = "3f2c5b590bc7a208d5b60f3527ce4c76a331aa2b"  # the revision conf/tasks pins for jnirschl/uBench


def write_ubench_labels(folder: Path, rows: list[tuple]) -> Path:
    """µ-Bench's layout (arrow shards under perception/0.1.0/) with the columns its classification tasks
    read: image, label_name, dataset, stain; rows are (dataset, stain, label_name)."""
    import datasets

    features = {
        "image": datasets.Image(),
        "label_name": datasets.Value("string"),
        "dataset": datasets.Value("string"),
        "stain": datasets.Value("string"),
    }
    columns = {
        "image": [
            {"bytes": image_bytes(list(COLORS.values())[i % 4]), "path": None} for i in range(len(rows))
        ],
        "label_name": [r[2] for r in rows],
        "dataset": [r[0] for r in rows],
        "stain": [r[1] for r in rows],
    }
    write_hf_file(folder / "perception/0.1.0/ubench-test-00000-of-00001.arrow", columns, features)
    (folder / "README.md").write_text("---\nlicense: cc-by-sa-4.0\n---\n")
    return folder
