"""train.strategy=fsdp without a process group: its refusals, sharded checkpoints' place among the files
(listing, pruning, stale-tmp cleanup, the half-written message), and the converter's optimizer re-keying.
The sharded step, checkpoints and resume themselves run under torchrun: tests/integration/test_fsdp.py."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from bmca_clip.checkpoint import (
    DCP_STATE,
    atomic_torch_save,
    list_checkpoints,
    load_checkpoint,
    remove_stale_tmp,
    resolve_checkpoint,
    save_checkpoint,
)
from bmca_clip.config import ConfigError, PretrainConfig, to_object
from bmca_clip.dcp_convert import convert, main, positional_optimizer
from bmca_clip.errors import CheckpointError
from bmca_clip.model import ModelConfig, build_model
from bmca_clip.sharded import (
    check_resume_strategy,
    mixed_precision,
    require_process_group,
    transformer_blocks,
)
from bmca_clip.train.resume import plan_resume
from bmca_clip.wise_ft import read_bmca_checkpoint
from tests.helpers.config import compose_config
from tests.helpers.hub import FakeHub
from tests.helpers.tiny_biomedclip import serve_tiny_biomedclip


def _dcp_folder(ckpt_dir, step: int, complete: bool = True):
    folder = ckpt_dir / f"step_{step:08d}.dcp"
    folder.mkdir(parents=True)
    (folder / ".metadata").write_bytes(b"")
    if complete:
        atomic_torch_save(
            {"model": {}, "step": step, "sharded": {"format": "dcp", "world_size": 2}}, folder / DCP_STATE
        )
    return folder


def test_strategy_is_checked_and_fsdp_without_a_process_group_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"train\.strategy.*'zero3'"):
        to_object(compose_config("pretrain", ["train.strategy=zero3"]), PretrainConfig)
    with pytest.raises(ConfigError) as err:
        require_process_group()
    assert "torchrun --nproc_per_node=1" in str(err.value) and "\n" not in str(err.value)


def test_a_resume_across_strategies_is_refused_naming_the_converter():
    old = OmegaConf.to_container(OmegaConf.structured(PretrainConfig()), resolve=True)
    new = to_object(compose_config("pretrain", ["train.strategy=fsdp"]), PretrainConfig)
    with pytest.raises(ConfigError, match=r"train\.strategy ddp -> fsdp cannot change.*bmca-dcp-convert"):
        plan_resume(old, new, step=10, old_world=1, world=1)
    with pytest.raises(ConfigError, match="is a sharded .* bmca-dcp-convert"):
        check_resume_strategy({"sharded": {}}, "ddp", "step_00000002.dcp")
    with pytest.raises(ConfigError, match="single-file .* model.pretrained"):
        check_resume_strategy({"model": {}}, "fsdp", "step_00000002.pt")
    check_resume_strategy({"sharded": {}}, "fsdp", "x")  # the same strategy resumes


def test_mixed_precision_policy_follows_train_precision():
    bf16 = mixed_precision("amp_bf16")
    assert bf16.param_dtype == torch.bfloat16 and bf16.reduce_dtype == torch.float32
    for precision in ("fp32", "pure_bf16", "amp_fp16"):
        assert mixed_precision(precision).param_dtype is None


def test_every_transformer_block_of_both_towers_is_found():
    model = build_model(ModelConfig(name="bmca-tiny")).model
    blocks = transformer_blocks(model)
    expected = [*model.visual.transformer.resblocks, *model.transformer.resblocks]
    assert len(blocks) == 4 and all(a is b for a, b in zip(blocks, expected, strict=True))


def test_biomedclips_timm_blocks_and_bert_layers_are_found(tmp_path):
    with FakeHub() as hub:
        name = serve_tiny_biomedclip(hub, tmp_path)
        with hub.use():
            model = build_model(ModelConfig(name=name)).model
    blocks = transformer_blocks(model)
    expected = [*model.visual.trunk.blocks, *model.text.transformer.encoder.layer]
    assert len(expected) == 6 + 2 and all(a is b for a, b in zip(blocks, expected, strict=True))


def test_sharded_checkpoints_are_listed_pruned_and_cleaned_like_files(tmp_path):
    ckpt = tmp_path / "checkpoints"
    _dcp_folder(ckpt, 2)
    save_checkpoint({"model": {}, "step": 3}, ckpt, 3, keep_last=5)
    _dcp_folder(ckpt, 4)
    (ckpt / ".step_00000006.dcp.tmp").mkdir()  # a write killed half-way
    assert [p.name for p in list_checkpoints(ckpt)] == [
        "step_00000002.dcp",
        "step_00000003.pt",
        "step_00000004.dcp",
    ]
    assert [p.name for p in remove_stale_tmp(ckpt)] == [".step_00000006.dcp.tmp"]
    save_checkpoint({"model": {}, "step": 5}, ckpt, 5, keep_last=2)  # keeps step 4's folder and step 5
    assert [p.name for p in list_checkpoints(ckpt)] == ["step_00000004.dcp", "step_00000005.pt"]
    state = load_checkpoint(ckpt / "step_00000004.dcp")
    assert state["step"] == 4 and state["dcp"] == str(ckpt / "step_00000004.dcp")


def test_a_half_written_sharded_checkpoint_is_named_and_export_is_told_to_convert(tmp_path):
    ckpt = tmp_path / "run" / "checkpoints"
    half = _dcp_folder(ckpt, 2, complete=False)
    with pytest.raises(
        CheckpointError, match=r"step_00000002\.dcp is unreadable or incomplete \(no state\.pt"
    ):
        load_checkpoint(half)
    _dcp_folder(ckpt, 4)
    with pytest.raises(CheckpointError, match=r"step_00000004\.dcp is a sharded .*bmca-dcp-convert"):
        resolve_checkpoint(str(tmp_path / "run"))
    with pytest.raises(CheckpointError, match="not a sharded checkpoint folder"):
        convert(tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"step_00000004\.dcp is a sharded .*bmca-dcp-convert"):
        read_bmca_checkpoint(str(ckpt / "step_00000004.dcp"))  # WiSE-FT's and eval.py's reader


def test_the_converter_keys_the_optimizer_by_position_and_scalars_come_back(capsys):
    named = {
        "state": {
            "visual.proj": {"step": torch.tensor(3.0), "exp_avg": torch.ones(2, 2)},
            "logit_scale": {"step": torch.tensor(3.0), "exp_avg": torch.ones(1)},
        },
        "param_groups": [
            {"params": ["visual.proj"], "lr": 0.1, "weight_decay": 0.2},
            {"params": ["ln.weight", "logit_scale"], "lr": 0.1, "weight_decay": 0.0},
        ],
    }
    plain = positional_optimizer(named)
    assert [g["params"] for g in plain["param_groups"]] == [[0], [1, 2]]
    assert plain["param_groups"][1]["weight_decay"] == 0.0
    assert set(plain["state"]) == {0, 2} and plain["state"][2]["exp_avg"].shape == ()
    # it is what torch.optim.Optimizer.load_state_dict takes for params in that order
    params = [
        torch.nn.Parameter(torch.zeros(2, 2)),
        torch.nn.Parameter(torch.zeros(3)),
        torch.nn.Parameter(torch.zeros(())),
    ]
    opt = torch.optim.AdamW([{"params": params[:1]}, {"params": params[1:], "weight_decay": 0.0}])
    opt.load_state_dict(plain)
    assert torch.equal(opt.state[params[0]]["exp_avg"], torch.ones(2, 2))
    with pytest.raises(SystemExit) as code:
        main(["step_00000002.dcp"])
    assert code.value.code == 2 and "key=value" in capsys.readouterr().err
