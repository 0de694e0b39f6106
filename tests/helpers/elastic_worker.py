"""Run by tests/integration/test_elastic_resume.py under torchrun: read BATCHES batches of this rank's
training loader, built as train/run.py builds it (from a checkpoint's data state when one is named),
then gather the ranks' data states as Trainer.save does, and read on for MORE batches (the uninterrupted
run). Rank r writes keys<r>.json (its batches' keys); rank 0 writes state.pt ({"data": {"ranks": [...]},
"config": {"data": {"num_workers": K}}}, a checkpoint's shape).

usage: elastic_worker.py OUT CORPUS BATCHES MORE WORKERS STREAMS [STATE]"""

import json
import sys
from pathlib import Path

import open_clip
import torch
import torch.distributed as torch_dist

from bmca_clip.data.decode import PilTransform
from bmca_clip.data.loader import build_train_loader
from bmca_clip.dist import init_distributed, shutdown
from bmca_clip.train.start import data_streams, rank_data_state
from tests.helpers.elastic import elastic_data


def main(out: Path, corpus: Path, batches: int, more: int, workers: int, streams: int, saved: Path | None):
    dist = init_distributed("cpu")
    state = torch.load(saved, weights_only=True) if saved else None
    loader = build_train_loader(
        elastic_data(corpus, num_workers=workers, streams=streams),
        PilTransform(open_clip.image_transform(32, is_train=False)),
        open_clip.get_tokenizer("bmca-tiny"),
        batch_size=4,
        seed=0,
        rank=dist.rank,
        world_size=dist.world_size,
        state=rank_data_state(state, dist.rank, dist.world_size, workers) if state else None,
        streams=data_streams(state),
    )
    keys = []
    for batch in loader:
        keys.append(batch["keys"])
        if len(keys) == batches:
            ranks = [None] * dist.world_size
            torch_dist.all_gather_object(ranks, loader.state_dict())
            if dist.is_main:
                config = {"data": {"num_workers": workers}}
                torch.save({"data": {"ranks": ranks}, "config": config}, out / "state.pt")
        if len(keys) == batches + more:
            break
    (out / f"keys{dist.rank}.json").write_text(json.dumps(keys))
    shutdown()


if __name__ == "__main__":
    args = sys.argv[1:]
    main(Path(args[0]), Path(args[1]), *map(int, args[2:6]), Path(args[6]) if len(args) > 6 else None)
