"""The `val` group of train.py: validation during training on the held-out shards.

Which shards are held out is a data setting (data.sources.<name>.holdout, data.holdout: they never train,
and changing them changes the stream); how often and how many pairs are scored is this group's, applied as
it stands on a resume. The scoring itself is bmca_clip/validation.py."""

from __future__ import annotations

from dataclasses import dataclass

from bmca_clip.config.checks import check


@dataclass
class ValConfig:
    """Held-out pairs scored every N steps: the run's own loss and image<->text R@1/5/10 among them."""

    every_steps: int = 1000  # score the held-out pairs every N optimizer steps and at the last; 0 = off
    # pairs scored (retrieval among them): the first ones of the held-out shards in a fixed order, the
    # same every time; fewer when the held-out shards hold fewer
    samples: int = 1000
    batch_size: int = 64  # pairs per forward pass when encoding them

    def __post_init__(self):
        check(self.every_steps >= 0, "val.every_steps", self.every_steps, "an integer >= 0 (0 = off)")
        check(self.samples >= 2, "val.samples", self.samples, "an integer >= 2")
        check(self.batch_size >= 1, "val.batch_size", self.batch_size, "an integer >= 1")
