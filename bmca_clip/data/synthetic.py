"""A small synthetic corpus shaped like BIOMEDICA, for tests and the CPU demo.

`write_corpus` (or `python -m bmca_clip.data.synthetic --out DIR`) writes `DIR/train/{commercial,
noncommercial,other}/NNNNNN.tar` (WebDataset shards in the hub layout, samples with `jpg`, `txt` and a `json`
holding the 25 fields of `biomedica.METADATA_FIELDS`) and three eval sets, each `images/NNNNNN.jpg` +
`test.csv` (`--cluster-ordered`: training samples sorted by cluster, figure type x colour, as BIOMEDICA's
k-means-ordered shards): `DIR/eval/synthetic_{modality,color}/` (`image,label`, label indexes `FIGURE_TYPES` or `COLORS`)
and `DIR/eval/synthetic_retrieval/` (`image,caption`, two captions per image).

Each image is a procedural figure of one of six `FIGURE_TYPES`, with 1-5 objects in one of four `COLORS`;
the caption states type, colour and count, so a CLIP model can learn the pairing in a few hundred steps.
Every sample draws from its own numpy generator seeded by (seed, stream, index): same arguments, same bytes.

synthetic_figures.py draws the figures and captions, synthetic_corpus.py writes the training shards and
synthetic_eval.py the eval sets; this module checks the arguments, writes the whole corpus and is the CLI.
"""

import argparse
import sys
import time
from pathlib import Path

from bmca_clip.data import biomedica as bm
from bmca_clip.data.synthetic_corpus import write_train
from bmca_clip.data.synthetic_eval import EVAL_SETS, write_eval
from bmca_clip.errors import CorpusArgumentError

# Smallest allowed argument values: one sample per licence subset, one eval image per figure type, and
# BIOMEDICA's own minimum image side.
_MINIMUM = dict(train_samples=3, samples_per_shard=1, eval_samples=6, seed=0, min_size=bm.MIN_IMAGE_SIZE)


def _check(args: dict) -> None:
    for name, low in _MINIMUM.items():
        if args[name] < low:
            raise CorpusArgumentError(f"--{name.replace('_', '-')} must be >= {low}, got {args[name]}")
    if args["min_size"] > args["max_size"]:
        raise CorpusArgumentError(
            f"--min-size must be <= --max-size, got {args['min_size']} > {args['max_size']}"
        )


def write_corpus(
    out: Path,
    train_samples: int = 6000,
    samples_per_shard: int = 500,
    eval_samples: int = 120,
    seed: int = 0,
    min_size: int = 64,
    max_size: int = 160,
    verbose: bool = False,
    cluster_ordered: bool = False,
) -> dict:
    """Write the synthetic corpus under `out` (layout in the module docstring); return a summary dict.

    Refuses an `out` that already holds `train/` or `eval/`: stale shards of a larger earlier run would
    otherwise be mixed into this one.
    """
    _check(dict(locals()))  # the arguments by name, so messages can name their flags
    out = Path(out)
    for sub in (out / "train", out / "eval"):
        if sub.exists():
            raise FileExistsError(f"{sub} already exists; delete it or choose another --out")
    log = print if verbose else (lambda *_: None)
    sizes = (min_size, max_size)
    train = write_train(out, seed, train_samples, samples_per_shard, sizes, log, cluster_ordered)
    summary = {"out": str(out), "seed": seed, "train_samples": train_samples, "train": train, "eval": {}}
    for stream, name in enumerate(EVAL_SETS, start=1):
        summary["eval"][name] = write_eval(out, name, stream, seed, eval_samples, sizes, log)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bmca_clip.data.synthetic", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder (train/ and eval/ go here)")
    parser.add_argument("--train-samples", type=int, default=6000, help="image-caption pairs in train/")
    parser.add_argument("--samples-per-shard", type=int, default=500, help="pairs per train tar shard")
    parser.add_argument("--eval-samples", type=int, default=120, help="images per eval set")
    parser.add_argument("--seed", type=int, default=0, help="the same seed writes the same corpus")
    parser.add_argument("--min-size", type=int, default=64, help="smallest image side in px")
    parser.add_argument("--max-size", type=int, default=160, help="largest image side in px")
    parser.add_argument(
        "--cluster-ordered",
        action="store_true",
        help="train shards sorted by cluster (figure type x colour), as BIOMEDICA's k-means-ordered ones",
    )
    args = vars(parser.parse_args(argv))
    start = time.perf_counter()
    try:
        write_corpus(**args, verbose=True)
    except (CorpusArgumentError, FileExistsError) as err:
        sys.exit(f"synthetic: {err}")  # one line on stderr, exit status 1
    print(f"wrote synthetic corpus to {args['out']} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
