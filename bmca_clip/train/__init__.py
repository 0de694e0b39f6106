"""Continual pretraining: everything `bmca-train` runs, one module per job.

    run          `run(cfg)`: build the run from its config (data, model, Trainer and its components), resume
                 if asked, train, and close whatever it opened however it ends
    start        where a run starts: a fresh folder or a checkpoint, refusing what would overwrite work
    trainer      the Trainer: model, optimizer, schedule and counters; the loop; checkpoints
    step         one optimizer step: feature-cache accumulation, mixed precision, clipping, nan/inf skips
    log_line     what a log line holds besides the loss: throughput and the checked data counters
    components   what the Trainer is handed at construction (checkpointer, logger, evaluator, preemption)
    evaluation   zero-shot evaluation during training, each rank scoring its share of the suite
    preemption   signals -> save, exit 75 and requeue under Slurm
    resume       what a resume may change, key by key, and the config history
    rundir       the run folder's lock

Nothing is re-exported here: importing a leaf of this package (the lock, the preemption handler) does not
load the training run. The entry point is `bmca_clip.train.run.run`.
"""
