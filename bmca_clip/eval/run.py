"""`run(cfg)` behind eval.py: evaluate one suite, or one shard of it, for each requested checkpoint.

Work is skipped where it was done before. A task whose stored JSON (output_dir/<model>/<task>.json)
has status ok and the same config_hash (report.py) is not scored again: the log says "cached result";
rerun=true scores it anyway. The hash covers the data too (config.data: the hub commit the revision
resolves to and the dataset's content fingerprint, identity.py), so the check runs once the task's
dataset is built, before the model runs; data whose identity cannot be confirmed (the hub unreachable,
the files read from the local cache) is scored again, and the log says why. The encoders' outputs go
through the embedding cache in cache_dir (cache.py), so another output_dir, or a task whose YAML
changed only its metrics, reuses the image features. A sharded run (shard=i/n, or a Slurm job array;
shard.py) writes its tasks' JSON and suite.json only; `python -m bmca_clip.eval.merge <output_dir>`
writes the summary once every shard is done. An unsharded run writes the summary itself (summary.md,
.csv, _domains.csv, .png) and per_class.md (per_class_report.py).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
from omegaconf import OmegaConf

from bmca_clip.checkpoint import resolve_checkpoint
from bmca_clip.config import ConfigError, EvaluateConfig
from bmca_clip.dist import pick_device
from bmca_clip.eval.cache import CachingEncoder, EmbeddingCache, describe_transform, state_dict_sha256
from bmca_clip.eval.compare_report import compare_and_write, model_identities
from bmca_clip.eval.encoders import ClipEncoder
from bmca_clip.eval.harness import TaskResult, evaluate_suite
from bmca_clip.eval.labels import model_labels, wise_label
from bmca_clip.eval.metrics import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, METRICS_VERSION
from bmca_clip.eval.per_class_plot import PLOT_SUFFIX, plot_confusion
from bmca_clip.eval.per_class_report import write_per_class_report
from bmca_clip.eval.progress import EvalProgress
from bmca_clip.eval.report import (
    cached_result,
    config_hash,
    format_domain_table,
    format_table,
    make_provenance,
    read_task_json,
    result_config,
    task_info,
    write_suite_file,
    write_summary,
    write_task_json,
)
from bmca_clip.eval.shard import resolve_shard, select
from bmca_clip.eval.suite import suite_from_config
from bmca_clip.eval.tasks import Task
from bmca_clip.io import autocast_dtype
from bmca_clip.model import ClipBundle, build_model, load_checked, trained_name
from bmca_clip.redact import redact_config
from bmca_clip.wise_ft import blend, check_alpha, check_base, load_state, read_bmca_checkpoint

log = logging.getLogger(__name__)


def config_header(cfg: EvaluateConfig) -> str:
    """The resolved config as YAML, credentials masked (redact.py), for the top of the run's output."""
    plain = OmegaConf.to_container(OmegaConf.structured(dataclasses.asdict(cfg)), resolve=True)
    return "eval config (resolved):\n" + OmegaConf.to_yaml(redact_config(plain))


def _weights(
    cfg: EvaluateConfig, checkpoint: Path | None, initial: dict, label: str | None = None, base_sha: str = ""
):
    """(label, state dict, provenance extras) for one requested checkpoint: as is, or blended with the
    initial weights (model.pretrained) at each WiSE-FT alpha, once they are known to be the weights the
    checkpoint's run started from (wise_ft.check_base; model.wise_ft_any_base=true merges any base).
    label is the checkpoint's short name (labels.py; default: its name alone); a blend's adds -wise<alpha>.
    base_sha: the weights_sha256 of the initial weights, which a blend records as wise_ft_base_sha256 where
    its alpha 0 is exactly them (every floating tensor of one dtype in both), so that the alpha sweep can
    place the checkpoint=null result at alpha 0 (compare_report.sweep_endpoints)."""
    label = label or model_labels([checkpoint], cfg.model.name, cfg.model.pretrained)[0]
    if checkpoint is None:
        yield label, initial, {}
        return
    ours = read_bmca_checkpoint(str(checkpoint))
    tuned = ours["model"] if ours is not None else load_state(str(checkpoint), cfg.model)
    if cfg.model.wise_ft_alpha is None:
        yield label, tuned, {}
        return
    if not cfg.model.pretrained:
        raise ConfigError("model.wise_ft_alpha blends with the base weights: set model.pretrained to them")
    base = f"model.pretrained={cfg.model.pretrained}"
    check_base(
        initial, ours, base, str(checkpoint), "model.wise_ft_any_base=true", cfg.model.wise_ft_any_base
    )
    alphas = (
        cfg.model.wise_ft_alpha
        if isinstance(cfg.model.wise_ft_alpha, (list, tuple))
        else [cfg.model.wise_ft_alpha]
    )
    exact = all(t.dtype == initial[k].dtype for k, t in tuned.items() if k in initial)
    base = {"wise_ft_base_sha256": base_sha} if base_sha and exact else {}
    for alpha in map(check_alpha, alphas):
        yield wise_label(label, alpha), blend(initial, tuned, alpha), {"wise_ft_alpha": alpha, **base}


def _config(configs: dict[str, dict], task: str, data: dict | None) -> dict:
    """A task's result config: the run's part plus the identity of the data it was scored on."""
    return {**configs[task], "data": data}


def _stored(folder: Path, configs: dict[str, dict]):
    """reuse(task, data) for the harness: the stored result with the config_hash this run would write."""

    def reuse(task: Task, data: dict) -> TaskResult | None:
        result = cached_result(folder / f"{task.name}.json", config_hash(_config(configs, task.name, data)))
        if result is not None:
            log.info(
                "task %s: cached result (same config_hash, same data, in %s): %s = %s",
                task.name,
                folder,
                task.main_metric,
                result.main_value,
            )
        return result

    return reuse


def _evaluate_model(
    cfg: EvaluateConfig,
    label: str,
    extra: dict,
    checkpoint: Path | None,
    tasks: tuple[Task, ...],
    bundle: ClipBundle,
    device: torch.device,
    cache: EmbeddingCache | None,
) -> list[TaskResult]:
    """Results of the model's current weights on tasks, in task order: stored ones where the config
    and the data match, the others scored now (each written to output_dir/<model>/<task>.json as it
    finishes)."""
    weights = state_dict_sha256(bundle.model, cfg.model.name)
    provenance = make_provenance(
        cfg.model.name, device, cfg.precision, pretrained=cfg.model.pretrained, checkpoint=checkpoint
    )
    provenance |= extra
    preprocess = describe_transform(bundle.preprocess_eval)
    model_id = {
        "name": cfg.model.name,
        "weights_sha256": weights,
        "checkpoint_sha256": provenance["checkpoint_sha256"],
        "wise_ft_alpha": extra.get("wise_ft_alpha"),
    }
    settings = {
        "precision": cfg.precision,
        "seed": cfg.seed,
        "preprocess": preprocess,
        "bootstrap": {"n_resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED},
        "metrics_version": METRICS_VERSION,
    }
    configs = {task.name: result_config(task, model_id, settings) for task in tasks}
    folder = Path(cfg.output_dir) / label  # labels.py: short, unique in this run, safe as a folder name
    amp_dtype = autocast_dtype(cfg.precision)
    encoder = ClipEncoder(bundle.model, bundle.tokenizer, device, amp_dtype, text_batch_size=cfg.batch_size)
    if cache is not None:
        encoder = CachingEncoder(encoder, cache, weights, preprocess)
    return evaluate_suite(
        tasks,
        bundle.model,
        bundle.preprocess_eval,
        bundle.tokenizer,
        device,
        cfg.data_root,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        amp_dtype=amp_dtype,
        on_result=lambda result: write_task_json(
            result, folder, provenance, _config(configs, result.task, result.data), label
        ),
        reuse=None if cfg.rerun else _stored(folder, configs),
        progress=EvalProgress(bar=cfg.progress_bar),
        encoder=encoder,
    )


def _plot_per_class(results: list[TaskResult], folder: Path, label: str) -> None:
    """<task>.confusion.png beside each task's JSON, stored results included (per_class_plots=true)."""
    for result in results:
        if result.status == "ok" and result.per_class:
            title = f"{result.task} ({label}), n={result.n}"
            plot_confusion(result.per_class, title, folder / f"{result.task}{PLOT_SUFFIX}")


def _records(out_dir: Path, results: dict[str, list[TaskResult]]) -> dict[str, list[dict]]:
    """Each model's stored JSON record of its first ok task (what model_identities reads)."""
    found = {}
    for label, items in results.items():
        ok = next((r for r in items if r.status == "ok"), None)
        path = out_dir / label / f"{ok.task}.json" if ok is not None else None
        found[label] = [read_task_json(path)] if path is not None and path.is_file() else []
    return found


def run(cfg: EvaluateConfig) -> dict[str, list[TaskResult]]:
    print(config_header(cfg), flush=True)  # first: what a log was made with, before anything can fail
    device = pick_device(cfg.device, 0, key="device")
    out_dir = Path(cfg.output_dir)
    checkpoints = [None if c is None else resolve_checkpoint(c) for c in cfg.checkpoints]
    suite = suite_from_config(cfg.suite)  # as Hydra composed it, overrides included (eval/suite.py)
    shard = resolve_shard(cfg.shard)
    tasks = select(suite.tasks, shard)
    if shard is not None:
        log.info("shard %d/%d of suite %s: %s", *shard, suite.name, ", ".join(t.name for t in tasks))
    # The same seed as training, so an untrained model here is the very initialisation training started from.
    torch.manual_seed(cfg.seed)
    bundle = build_model(cfg.model, device)
    initial = {k: v.detach().clone() for k, v in bundle.model.state_dict().items()}
    base_sha = state_dict_sha256(bundle.model, cfg.model.name) if cfg.model.wise_ft_alpha is not None else ""
    cache = EmbeddingCache(cfg.cache_dir) if cfg.cache_dir else None
    results: dict[str, list[TaskResult]] = {}
    alphas: dict[str, float] = {}  # label -> WiSE-FT alpha, for the alpha sweep plot
    names = model_labels(checkpoints, cfg.model.name, cfg.model.pretrained, out_dir)
    for checkpoint, name in zip(checkpoints, names, strict=True):
        for label, state, extra in _weights(cfg, checkpoint, initial, name, base_sha):
            what = "the model as configured" if checkpoint is None else checkpoint
            log.info(
                "evaluating %s (%s) on suite %s: results in %s/%s", label, what, suite.name, out_dir, label
            )
            # The checkpoint's own model.name is read again only if its weights do not fit.
            trained_as = lambda: trained_name(read_bmca_checkpoint(str(checkpoint)))  # noqa: B023, E731
            load_checked(bundle.model, state, f"checkpoint={checkpoint}", cfg.model.name, trained_as)
            results[label] = _evaluate_model(cfg, label, extra, checkpoint, tasks, bundle, device, cache)
            if cfg.per_class_plots:
                _plot_per_class(results[label], out_dir / label, label)
            if "wise_ft_alpha" in extra:
                alphas[label] = extra["wise_ft_alpha"]
    infos = [task_info(task) for task in suite.tasks]
    write_suite_file(out_dir, suite.name, infos, list(results), cfg.compare_baseline)
    if shard is not None:
        print(format_table(results))
        print(f"\nshard {shard[0]}/{shard[1]} done; once all are: python -m bmca_clip.eval.merge {out_dir}")
        return results
    print(format_domain_table(results, infos) + "\n\n" + format_table(results, infos))
    identities = model_identities(_records(out_dir, results))  # as merge.py reads them: the same sweep
    intervals, compared = compare_and_write(results, infos, out_dir, cfg.compare_baseline, alphas, identities)
    md, csv = write_summary(results, out_dir, infos, intervals, [compared] if compared else [])
    per_class = write_per_class_report(results, out_dir, infos)
    print(f"\nresults: {out_dir}/<model>/<task>.json, summary: {md}, {csv}, summary.png, {per_class.name}")
    return results
