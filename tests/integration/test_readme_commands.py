"""Every shell command in README.md and slurm/README.md, run as printed, so the README cannot drift.

Commands come from the ```bash blocks (backslash continuations joined, comments dropped). A line indented
under a comment such as "same command plus" (`    resume=latest`) is a documented variant: it is the
previous command with those arguments appended. COVERAGE says how each command is checked, keyed by its
exact text; a command with no entry fails ("README command not covered: ..."), and so does an entry whose
command left the README. Adding a command is one line there:

    Compose()  needs GPUs, torchrun on 8 GPUs, sbatch, the hub or ViT-L-14 weights: `python <entry point>
               <the same overrides> --cfg job` (the overrides after train.py / eval.py / the .sbatch script)
               must exit 0: Hydra composes and types the config exactly as the real run would;
    Run(...)   runs for real through bash, with tiny settings substituted (a model, a path), in a
               workspace folder: data/synthetic (a small synthetic corpus), runs/demo (a tiny trained run,
               also reachable as runs/bmca_clip), and symlinks to train.py, eval.py and conf/;
    Shell()    runs as printed (e.g. an `export`);
    Exclude(reason)  not run, with the reason.

Each command runs in a fresh interpreter through bash, so the shell's own quoting is part of the test.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bmca_clip.config import PretrainConfig, to_object
from tests.helpers.config import REPO, compose_config, tiny_train_overrides
from tests.helpers.readme import all_commands, compose_line

TIMEOUT_S = 300


@dataclass(frozen=True)
class Compose:
    """Compose the command's config with Hydra (`--cfg job`) instead of running it."""


@dataclass(frozen=True)
class Run:
    """Run for real in the workspace: `replace` substitutes tiny settings; `needs` names workspace steps
    that must have run first ("eval": the README's demo eval, or a README command); `creates`: files the command must write."""

    replace: dict[str, str] = field(default_factory=dict)
    needs: tuple[str, ...] = ()
    creates: tuple[str, ...] = ()


@dataclass(frozen=True)
class Shell:
    """Run as printed."""


@dataclass(frozen=True)
class Exclude:
    reason: str


DEMO_EVAL = "python eval.py suite=demo model=bmca-small checkpoint=runs/demo"
TINY_EVAL = {"model=bmca-small": "model=bmca-tiny"}  # runs/demo here is a bmca-tiny run
STEP_CKPTS = {"step_00026367.pt": "step_00000006.pt"}

PIP = "installs into the environment running the tests; tests/integration/test_packaging.py builds the wheel and installs it into a fresh venv"
MY_EXPERIMENT = r"""printf '# @package _global_\ndefaults:\n - override /data: synthetic\nname: mine\ntrain: {steps: 20, batch_size: 32, device: cpu}\n' > my_conf/experiment/mine.yaml"""

COVERAGE: dict[str, Compose | Run | Shell | Exclude] = {
    # README.md: Two commands
    "make demo": Exclude("installs .venv and trains 300 steps (minutes); its eval command runs below, tiny"),
    "make test": Exclude("it is this test suite"),
    # Install as a library
    "pip install .": Exclude(PIP),
    "pip install '.[slurm,wandb,tensorboard]'": Exclude(PIP),
    "bmca-synthetic --out data/synthetic": Run(
        {"--out data/synthetic": "--out data/synthetic-cli --train-samples 64 --eval-samples 16"},
        creates=("data/synthetic-cli/train/commercial/000000.tar",),
    ),
    "bmca-train experiment=demo": Compose(),
    "bmca-eval suite=demo model=bmca-small checkpoint=runs/demo": Run(TINY_EVAL, creates=("runs/eval/demo/summary.md",)),
    "bmca-merge runs/eval/demo": Run(needs=("eval",), creates=("runs/eval/demo/summary.csv",)),
    "bmca-wise-ft base=runs/demo/checkpoints/step_00000200.pt tuned=runs/demo/checkpoints/step_00000300.pt alpha=0.5 out=runs/demo/wise_0.5.pt model=bmca-small any_base=true": Run(
        {"step_00000200.pt": "step_00000003.pt", "step_00000300.pt": "step_00000006.pt", **TINY_EVAL},
        creates=("runs/demo/wise_0.5.pt",),
    ),
    "bmca-export checkpoint=runs/demo out=exported/ results=runs/eval/demo": Run(
        {"out=exported/": "out=exported-cli/"}, needs=("eval",), creates=("exported-cli/open_clip_model.safetensors",)
    ),
    "mkdir -p my_conf/experiment": Shell(),
    MY_EXPERIMENT: Shell(),
    'bmca-train "hydra.searchpath=[file://$PWD/my_conf]" experiment=mine': Run(
        needs=("mkdir -p my_conf/experiment", MY_EXPERIMENT), creates=("runs/mine/config.yaml",)
    ),
    # Real use
    "export HF_TOKEN=hf_...": Shell(),
    "torchrun --nproc_per_node=8 train.py model=ViT-L-14 model.pretrained=commonpool_xl_clip_s13b_b90k data=biomedica_concept_filtered train.batch_size=1024 train.precision=amp_bf16 optim.lr=1e-6": Compose(),
    "python train.py data=local data.train_shards='/data/shards/{000000..000099}.tar'": Compose(),
    "python train.py data=local data.train_shards='/data/shards/{000000..000099}.tar' resume=latest": Compose(),
    # Validation during training
    "python train.py experiment=demo name=demo_val data.holdout=commercial/000000.tar val.every_steps=100": Run(
        {"val.every_steps=100": "val.every_steps=3 val.samples=40 model=bmca-tiny train.steps=4 train.batch_size=16 data.num_workers=0 logger.progress_bar=false"},
        creates=("runs/demo_val/metrics.jsonl",),
    ),
    # Parquet and CSV training data (the hub for the first three: tests/integration/data/test_hub_parquet*.py
    # run them against the test hub; the CSV source: tests/unit/data/test_table_sources.py)
    "python train.py data=mixed_roco": Compose(),
    "python train.py data=mixed_roco data.sources.roco.weight=2400000": Compose(),
    "python train.py data=mixed_roco data.sources.roco.repo_id=me/figure_captions data.sources.roco.caption_column=text": Compose(),
    "python train.py data=csv data.sources.table.shards=/data/roco/train.tsv": Compose(),
    DEMO_EVAL: Run(TINY_EVAL, creates=("runs/eval/demo/summary.md",)),
    # Multi-GPU training and the BMCA-CLIP recipe
    "torchrun --nproc_per_node=4 train.py experiment=bmca_clip": Compose(),
    "python train.py experiment=bmca_clip_1gpu": Compose(),
    "torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=$HEAD:29500 train.py experiment=bmca_clip": Compose(),
    # Sharded training (FSDP2)
    "torchrun --nproc_per_node=8 train.py experiment=bmca_clip model.name=ViT-H-14 model.pretrained=laion2b_s32b_b79k train.strategy=fsdp model.grad_checkpointing=true": Compose(),
    "python -m bmca_clip.dcp_convert checkpoint=runs/bmca_clip/checkpoints/step_00001000.dcp": Exclude(
        "needs an fsdp run's DCP checkpoint (torchrun); tests/integration/test_fsdp.py converts one and exports it"
    ),
    # Slurm (README.md and slurm/README.md)
    "sbatch slurm/train.sbatch experiment=bmca_clip model=ViT-L-14": Compose(),
    "sbatch slurm/eval_array.sbatch suite=all model=ViT-L-14 checkpoint=runs/bmca_clip": Compose(),
    "python train.py -m optim.lr=1e-6,5e-6 hydra/launcher=slurm": Compose(),
    "sbatch --nodes=4 slurm/train.sbatch experiment=bmca_clip train.batch_size=256 name=vitl-4nodes": Compose(),
    # WiSE-FT and export: the tiny run stands in for runs/bmca_clip; its first checkpoint for the base tag
    "python -m bmca_clip.wise_ft base=commonpool_xl_clip_s13b_b90k tuned=runs/bmca_clip/checkpoints/step_00026367.pt alpha=0.5 out=runs/bmca_clip/wise_0.5.pt": Run(
        {"base=commonpool_xl_clip_s13b_b90k": "base=runs/bmca_clip/checkpoints/step_00000003.pt any_base=true", **STEP_CKPTS},
        creates=("runs/bmca_clip/wise_0.5.pt",),
    ),
    "python eval.py suite=demo model=ViT-L-14 model.pretrained=commonpool_xl_clip_s13b_b90k checkpoint=runs/bmca_clip 'model.wise_ft_alpha=[0.25,0.5,0.75,1.0]'": Compose(),
    # Continual pretraining from BiomedCLIP (the real hub id: composed; tests/integration/test_biomedclip_*.py
    # run the same commands on a tiny model of its shape from a local hub)
    "pip install '.[biomedclip]'": Exclude(PIP),
    "python train.py model=biomedclip data=biomedica_concept_filtered train.precision=amp_bf16 optim.lr=1e-6": Compose(),
    "python train.py model=biomedclip model.lock_text=true model.lock_text_unlocked_layers=2 model.grad_checkpointing=true": Compose(),
    "python -m bmca_clip.wise_ft base=hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 tuned=runs/bmca_clip/checkpoints/step_00026367.pt alpha=0.5 out=runs/bmca_clip/wise_0.5.pt": Exclude(
        "downloads BiomedCLIP from the hub; tests/integration/test_biomedclip_e2e.py runs this command on a tiny model of its shape"
    ),
    "python eval.py suite=biomedclip5 model=biomedclip": Compose(),
    "python -m bmca_clip.export checkpoint=runs/bmca_clip out=exported/ results=runs/eval/demo [push_to_hub=org/name]": Run(
        {" [push_to_hub=org/name]": ""}, needs=("eval",), creates=("exported/open_clip_model.safetensors",)
    ),
    # Zero-shot evaluation: the 40-task benchmark
    "python eval.py suite=dermatology model=ViT-L-14 checkpoint=runs/bmca_clip": Compose(),
    "python eval.py suite=all model=ViT-L-14 model.pretrained=commonpool_xl_clip_s13b_b90k 'checkpoint=[null,runs/bmca_clip]'": Compose(),
    "python eval.py suite=all shard=2/4 ...": Compose(),
    "python eval.py task=conf/tasks/synthetic_color.yaml model=bmca-small checkpoint=runs/demo": Run(TINY_EVAL, creates=("runs/eval/synthetic_color/summary.md",)),
    "python eval.py task=conf/tasks/synthetic_modality.yaml model=bmca-small 'suite.protocols=[zero_shot,linear_probe]'": Run(
        TINY_EVAL, creates=("runs/eval/synthetic_modality/untrained/synthetic_modality@linear_probe.json", "runs/eval/synthetic_modality/per_class.md")
    ),
    "python -m bmca_clip.eval.merge runs/eval/all": Run({"runs/eval/all": "runs/eval/demo"}, needs=("eval",)),
    # Linear probes and few-shot (k-shot) scores
    "python eval.py suite=demo model=bmca-small checkpoint=runs/demo 'suite.protocols=[zero_shot,linear_probe,k_shot]' output_dir=runs/eval/demo_probes": Run(
        TINY_EVAL, creates=("runs/eval/demo_probes/summary.md",)
    ),
    "python eval.py suite=demo model=bmca-small 'checkpoint=[null,runs/demo]' compare_baseline=untrained": Run(
        TINY_EVAL, creates=("runs/eval/demo/comparison.md", "runs/eval/demo/comparison.json")
    ),
}  # fmt: skip


COMMANDS = all_commands()


class Workspace:
    """A folder laid out like the repository in use: train.py, eval.py and conf/ (symlinks), the
    synthetic corpus in data/synthetic, a tiny trained run in runs/demo (= runs/bmca_clip)."""

    def __init__(self, root: Path, corpus: Path):
        self.root = root
        for name in ("train.py", "eval.py", "conf"):
            (root / name).symlink_to(REPO / name)
        (root / "data").mkdir()
        (root / "data" / "synthetic").symlink_to(corpus)
        (root / "home").mkdir()
        bin_dir = root / "bin"
        bin_dir.mkdir()
        # a wrapper, not a symlink: a symlinked venv python would not find its pyvenv.cfg
        (bin_dir / "python").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
        (bin_dir / "python").chmod(0o755)
        self.env = {
            **os.environ,
            # python -> this interpreter; console scripts (bmca-*) from its environment
            "PATH": os.pathsep.join(
                [str(bin_dir), str(Path(sys.executable).parent), os.environ.get("PATH", "")]
            ),
            "PYTHONPATH": str(REPO),
            "HOME": str(root / "home"),  # caches (eval embeddings, hub) stay in the workspace
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
        }
        self.done: set[str] = set()

    def train_tiny_run(self) -> None:
        from bmca_clip.train.run import run

        out = self.root / "runs" / "demo"
        cfg = compose_config("pretrain", tiny_train_overrides(self.root / "data" / "synthetic", out))
        run(to_object(cfg, PretrainConfig))
        (self.root / "runs" / "bmca_clip").symlink_to(out)

    def bash(self, line: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", "-c", line],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )

    def need(self, step: str) -> None:
        if step in self.done:
            return
        # "eval": the README's demo eval, tiny; any other step is a README command run as printed
        result = self.bash(substitute(DEMO_EVAL, TINY_EVAL) if step == "eval" else step)
        assert result.returncode == 0, result.stderr[-3000:]
        self.done.add(step)


def substitute(command: str, replace: dict[str, str]) -> str:
    for old, new in replace.items():
        assert old in command, f"Run.replace: {old!r} is not in {command!r}"
        command = command.replace(old, new)
    return command


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, corpus):
    ws = Workspace(tmp_path_factory.mktemp("readme"), corpus)
    ws.train_tiny_run()
    return ws


def test_every_readme_command_is_covered_and_every_entry_is_in_a_readme():
    texts = {cmd for _, cmd in COMMANDS}
    missing = [f"README command not covered: {cmd} ({name})" for name, cmd in COMMANDS if cmd not in COVERAGE]
    stale = [f"COVERAGE entry no README holds any more: {cmd}" for cmd in COVERAGE if cmd not in texts]
    assert not missing + stale, "\n".join(missing + stale)


@pytest.mark.parametrize(
    "readme, command", COMMANDS, ids=[f"{i:02d}-{c[:50]}" for i, (_, c) in enumerate(COMMANDS)]
)
def test_readme_command(readme, command, workspace):
    plan = COVERAGE.get(command)
    assert plan is not None, f"README command not covered: {command} ({readme})"
    if isinstance(plan, Exclude):
        pytest.skip(f"not run: {plan.reason}")
    if isinstance(plan, Compose):
        line = compose_line(command)
    elif isinstance(plan, Run):
        for step in plan.needs:
            workspace.need(step)
        line = substitute(command, plan.replace)
    else:
        line = command
    result = workspace.bash(line)
    assert result.returncode == 0, f"{line}\nexit {result.returncode}\n{result.stderr[-3000:]}"
    for path in getattr(plan, "creates", ()):
        assert (workspace.root / path).is_file(), f"{line} did not write {path}"
    if command == DEMO_EVAL:
        workspace.done.add("eval")
