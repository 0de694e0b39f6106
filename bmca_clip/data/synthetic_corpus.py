"""The synthetic training shards: figures (synthetic_figures.py) with BIOMEDICA's 25 metadata fields, in the
hub's layout `train/{commercial,noncommercial,other}/NNNNNN.tar`, each subset's share as on the hub.

Every article draws from its own numpy generator seeded by (seed, 0, article index): same arguments, same
bytes. `cluster_ordered` writes each subset's samples sorted by cluster (figure type x colour, `cluster_of`),
so a shard holds one to three clusters, as BIOMEDICA's k-means-ordered shards do.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import webdataset as wds

from bmca_clip.data import biomedica as bm
from bmca_clip.data.synthetic_figures import CAPTION_TEMPLATES, caption, draw_figure

_LABELS = (  # (primary, secondary) concept per figure type, from the BIOMEDICA vocabulary
    ("Microscopy", "fluorescence microscopy"),
    ("Microscopy", "light microscopy"),
    ("Clinical Imaging", "x-ray radiography"),
    ("Clinical Imaging", "ultrasound"),
    ("Plots and Charts", "bar plots"),
    ("Chemical Structures", "chemical structure"),
)
_WORDS = (
    "cell tissue expression protein signal patient cohort analysis response tumor receptor pathway "
    "treatment gene sample level increase decrease significant model control group clinical imaging "
    "marker mutation binding activity factor region observed measured compared associated baseline "
    "inflammation therapy diagnosis outcome dose concentration assay culture sequence structure"
).split()
_JOURNALS = ("PLoS One", "Sci Rep", "Nat Commun", "BMC Cancer", "Front Immunol", "J Biol Chem", "eLife")
_MESH = (
    "Humans|Animals|Mice|Female|Male|Neoplasms|Cell Line, Tumor|Radiography|Microscopy, Fluorescence|"
    "Ultrasonography|Gene Expression|Molecular Structure"
).split("|")
_SUBJECTS = ("Research Article", "Original Article", "Cell Biology", "Radiology", "Oncology", "Chemistry")
_SHARES = {name: n / sum(bm.SUBSET_PAIRS.values()) for name, n in bm.SUBSET_PAIRS.items()}
_MTIME = 1704067200  # fixed tar member mtime (2024-01-01): webdataset would stamp time.time()


def _filler(rng, n_words: int) -> str:
    words = rng.choice(_WORDS, size=n_words)
    cuts = np.cumsum(rng.integers(8, 16, size=n_words // 8 + 1))
    sentences = [" ".join(words[a:b]) for a, b in zip(np.r_[0, cuts], cuts, strict=False) if a < n_words]
    return " ".join(s[0].upper() + s[1:] + "." for s in sentences)


def _article(rng, index: int, subset: str) -> dict:
    """Article-level metadata shared by all figures of one synthetic paper."""
    year, month, day = int(rng.integers(2000, 2025)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
    journal = str(rng.choice(_JOURNALS))
    n_refs = int(rng.integers(5, 30))
    ref_ids = [str(v) for v in rng.integers(10_000_000, 39_999_999, size=n_refs)]
    refs = [
        f"Author{k} A, Author{k + 1} B. {_filler(rng, 8)[:-1]}. {rng.choice(_JOURNALS)}. "
        f"{int(rng.integers(1990, year + 1))};{int(rng.integers(1, 60))}:{int(rng.integers(1, 999))}."
        for k in range(n_refs)
    ]
    return {
        # Disjoint ranges of 97 per article keep accession ids (and so sample keys) unique.
        "article_accession_id": f"PMC{1_000_000 + index * 97 + int(rng.integers(97))}",
        "article_title": _filler(rng, int(rng.integers(8, 14)))[:-1],
        "article_journal": journal,
        "article_date": f"{year:04d}-{month:02d}-{day:02d}",
        "article_abstract": _filler(rng, int(rng.integers(60, 120))),
        "article_mesh_terms": sorted(rng.choice(_MESH, size=int(rng.integers(3, 7)), replace=False).tolist()),
        "article_keywords": rng.choice(_WORDS, size=int(rng.integers(3, 6)), replace=False).tolist(),
        "article_reference_ids": ref_ids,
        "article_reference_count": n_refs,
        "article_reference_list": refs,
        "article_subject": rng.choice(_SUBJECTS, size=int(rng.integers(1, 3)), replace=False).tolist(),
        "article_citation": f"{journal}. {year};{int(rng.integers(1, 40))}:{int(rng.integers(1, 9999))}.",
        "article_license": str(rng.choice(bm.SUBSETS[subset])),
        "article_text": _filler(rng, int(rng.integers(200, 350))),
    }


def _sample(rng, article: dict, fig: int, panel: int, n_panels: int, sizes: tuple[int, int]) -> dict:
    """One WebDataset sample (key, jpg, txt, json) for panel `panel` of figure `fig` of `article`."""
    kind, color, count = int(rng.integers(6)), int(rng.integers(4)), int(rng.integers(1, 6))
    size = (int(rng.integers(sizes[0], sizes[1] + 1)), int(rng.integers(sizes[0], sizes[1] + 1)))
    jpg = draw_figure(rng, kind, color, count, size)
    key = f"{article['article_accession_id']}_fig{fig}_panel{panel}"
    label_id = kind * 333 + color * 80 + int(rng.integers(80))  # clusters are visual: type and colour
    image = {
        "image_file_name": f"{key}.jpg",
        "image_cluster_id": str(label_id * 100 + int(rng.integers(100))),
        "image_hash": hashlib.md5(jpg).hexdigest(),
        "image_label_id": str(label_id),
        "image_panel_type": "single" if n_panels == 1 else "multiple",
        "image_panel_subtype": _LABELS[kind][1],
        "image_primary_label": [_LABELS[kind][0]],
        "image_secondary_label": [_LABELS[kind][1]],
        "image_size": list(size),
        "image_set": f"fig{fig}",
        "image_context": [f"As shown in Figure {fig}, {_filler(rng, 12).lower()}"],
    }
    meta = {**image, **article}
    meta = {field: meta[field] for field in bm.METADATA_FIELDS}
    txt = caption(kind, color, count, int(rng.integers(len(CAPTION_TEMPLATES))), fig, panel)
    return {"__key__": key, "jpg": jpg, "txt": txt.encode(), "json": json.dumps(meta).encode()}


def _subset_samples(seed: int, subset: str, n: int, sizes: tuple[int, int]):
    """Yield n samples of one subset, article by article; each article has its own generator."""
    produced, slot = 0, list(bm.SUBSETS).index(subset)
    for k in range(n):
        index = k * len(bm.SUBSETS) + slot  # interleaved article numbers keep subsets' keys disjoint
        rng = np.random.default_rng([seed, 0, index])
        article = _article(rng, index, subset)
        for fig in range(1, int(rng.integers(1, 5)) + 1):
            n_panels = 1 if rng.random() < 0.6 else int(rng.integers(2, 5))
            for panel in range(n_panels):
                if produced == n:
                    return
                yield _sample(rng, article, fig, panel, n_panels, sizes)
                produced += 1


def cluster_of(meta: dict) -> int:
    """A sample's cluster from its metadata: figure type x colour (0-23), what its image_label_id encodes."""
    label = int(meta["image_label_id"])
    return label // 333 * 4 + label % 333 // 80


def _by_cluster(sample: dict) -> tuple[int, str]:
    return cluster_of(json.loads(sample["json"])), sample["__key__"]


def write_train(
    out: Path, seed: int, train_samples: int, per_shard: int, sizes, log, cluster_ordered: bool = False
) -> dict:
    """Split train_samples over the subsets in the hub's proportions (>= 1 each) and write the shards."""
    counts = {name: max(1, round(train_samples * share)) for name, share in _SHARES.items()}
    counts["commercial"] = train_samples - counts["noncommercial"] - counts["other"]
    summary = {}
    for subset, n in counts.items():
        folder = out / "train" / subset
        folder.mkdir(parents=True, exist_ok=True)
        shards, samples = [], _subset_samples(seed, subset, n, sizes)
        if cluster_ordered:
            samples = iter(sorted(samples, key=_by_cluster))
        while batch := [s for _, s in zip(range(per_shard), samples, strict=False)]:
            shards.append(folder / f"{len(shards):06d}.tar")
            with wds.TarWriter(str(shards[-1]), mtime=_MTIME) as sink:
                for sample in batch:
                    sink.write(sample)
        summary[subset] = {"samples": n, "shards": [str(p) for p in shards]}
        log(f"train/{subset}: {n} samples in {len(shards)} shards")
    return summary
