"""Continual pretraining of a CLIP model: `bmca-train` (installed) or `python train.py` (a checkout).

bmca-train experiment=demo
torchrun --nproc_per_node=8 train.py model=ViT-L-14 model.pretrained=commonpool_xl_clip_s13b_b90k
bmca-train -m optim.lr=1e-6,5e-6 hydra/launcher=slurm   # a sweep as one Slurm job array
bmca-train --help            # the config groups and every key
"""

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from bmca_clip.cli import check_group_choice, exit_on_user_error
from bmca_clip.cli_args import prepare_argv
from bmca_clip.config import PretrainConfig, register_configs, to_object
from bmca_clip.paths import CONF_DIR
from bmca_clip.redact import hydra_record

register_configs()


def _sweep_output_dir(cfg: DictConfig) -> DictConfig:
    """In a multirun each job gets its own folder, runs/<name>-sweep/<job number> (hydra.sweep in
    conf/pretrain.yaml), unless output_dir is one of the overrides."""
    hydra_cfg = HydraConfig.get()
    overridden = any(o.split("=", 1)[0].lstrip("+~") == "output_dir" for o in hydra_cfg.overrides.task)
    if hydra_cfg.mode == RunMode.MULTIRUN and not overridden:
        cfg.output_dir = hydra_cfg.runtime.output_dir
    return cfg


@hydra.main(config_path=str(CONF_DIR), config_name="pretrain", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    from bmca_clip import dist  # after Hydra parsed the command line: --help stays fast
    from bmca_clip.tracking import check_wandb
    from bmca_clip.train.run import run

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("bmca_clip").setLevel(logging.INFO)
    try:
        cfg = _sweep_output_dir(cfg)
        ckpt_dir = cfg.checkpoint.get("dir") or f"{cfg.output_dir}/checkpoints"
        with exit_on_user_error(where=ckpt_dir, disk_hint="checkpoint.dir (or output_dir)"):
            check_group_choice("experiment")  # optional in conf/pretrain.yaml: Hydra ignores a misspelling
            check_wandb(cfg.logger)  # before a model is built or downloaded
            # .hydra/ (redacted) is written by run() once its checks pass: conf/pretrain.yaml stops Hydra's
            run(to_object(cfg, PretrainConfig), hydra_files=hydra_record(cfg))
    finally:
        dist.shutdown()


def main() -> None:
    """The bmca-train console script (and train.py): Hydra reads the overrides from sys.argv."""
    # Before Hydra: quote brace patterns; refuse a misspelt key (in an override or a group file) or a
    # missing launcher plugin in one line
    prepare_argv(sys.argv, PretrainConfig)
    _main()


if __name__ == "__main__":
    sys.exit(main())
