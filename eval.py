"""Zero-shot evaluation of one or more checkpoints on a suite of tasks.

python eval.py suite=demo model=bmca-small checkpoint=runs/demo
python eval.py suite=demo model=bmca-small 'checkpoint=[null,runs/demo]'   # untrained vs trained
"""

import logging
import sys

import hydra
from omegaconf import DictConfig

from bmca_clip.cli import exit_on_user_error
from bmca_clip.config import EvaluateConfig, register_configs, to_object

register_configs()


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from bmca_clip.eval import run  # after Hydra parsed the command line: --help stays fast

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("bmca_clip").setLevel(logging.INFO)
    with exit_on_user_error():
        run.run(to_object(cfg, EvaluateConfig))


if __name__ == "__main__":
    sys.exit(main())
