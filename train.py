"""Continual pretraining of a CLIP model.

python train.py experiment=demo
torchrun --nproc_per_node=8 train.py model=ViT-L-14 model.pretrained=commonpool_xl_clip_s13b_b90k
python train.py --help            # the config groups and every key
"""

import logging
import sys

import hydra
from omegaconf import DictConfig

from bmca_clip.cli import exit_on_user_error
from bmca_clip.config import PretrainConfig, register_configs, to_object

register_configs()


@hydra.main(config_path="conf", config_name="pretrain", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from bmca_clip import dist, train  # after Hydra parsed the command line: --help stays fast

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("bmca_clip").setLevel(logging.INFO)
    try:
        with exit_on_user_error():
            train.run(to_object(cfg, PretrainConfig))
    finally:
        dist.shutdown()


if __name__ == "__main__":
    sys.exit(main())
