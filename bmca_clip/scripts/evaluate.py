"""Zero-shot evaluation of one or more checkpoints on a suite of tasks: `bmca-eval` (installed) or
`python eval.py` (a checkout).

bmca-eval suite=demo model=bmca-small checkpoint=runs/demo
bmca-eval suite=demo model=bmca-small 'checkpoint=[null,runs/demo]'   # untrained vs trained
bmca-eval task=conf/tasks/synthetic_color.yaml checkpoint=runs/demo    # one task YAML (or a folder), no suite

Exit status: 0 every task ok; 2 refused (one `error:` line); 3 the summary is written but some tasks failed
(the last line names them).
"""

import logging
import sys

import hydra
from omegaconf import DictConfig

from bmca_clip.cli import EXIT_TASKS_FAILED, exit_on_user_error, failed_tasks_line
from bmca_clip.cli_args import prepare_argv
from bmca_clip.config import EvaluateConfig, register_configs, to_object
from bmca_clip.eval.one_off import one_off_argv
from bmca_clip.paths import CONF_DIR

register_configs()


@hydra.main(config_path=str(CONF_DIR), config_name="evaluate", version_base="1.3")
def _main(cfg: DictConfig) -> None:
    from bmca_clip.eval import run  # after Hydra parsed the command line: --help stays fast

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("bmca_clip").setLevel(logging.INFO)
    with exit_on_user_error(where=cfg.output_dir, disk_hint="output_dir (cache_dir for the embeddings)"):
        results = run.run(to_object(cfg, EvaluateConfig))
    # After the summary: a nonzero status tells Slurm and scripts that some numbers are missing.
    if line := failed_tasks_line(results):
        sys.stdout.flush()  # the tables first: in a Slurm log (one file, stdout buffered) this stays last
        print(f"{line}; each task's error is in {cfg.output_dir}/<model>/<task>.json", file=sys.stderr)
        sys.exit(EXIT_TASKS_FAILED)


def main() -> None:
    """The bmca-eval console script (and eval.py): Hydra reads the overrides from sys.argv."""
    # Before Hydra: quote brace patterns; refuse a misspelt key (in an override or a group file) or a
    # missing launcher plugin in one line
    # task=<yaml or folder> becomes the suite overrides that score just those tasks (eval/one_off.py)
    with exit_on_user_error():
        sys.argv[:] = one_off_argv(sys.argv)
    prepare_argv(sys.argv, EvaluateConfig)
    _main()


if __name__ == "__main__":
    sys.exit(main())
