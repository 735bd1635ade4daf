"""The trainer: `train_and_evaluate(config, workdir)` and the modules it calls.

    config.py       the config: arg parser, base config, checks (cheap, before anything is written)
    setup.py        the model (init source + growth), the method, the optimizer, the state: abstract first
    step.py         loss (target positions only), train step (gradient accumulation), eval step
    optim.py        AdamW + schedule + clipping, optax.partition over trainable / frozen leaves
    sharding.py     the device mesh, path rules -> NamedSharding, global batches
    checkpointing.py orbax checkpoints of the state, the data position and the run's meta; resume order
    trained.py      a trained model (workdir or params file) and the weights it started from
    preemption.py   SIGTERM and Ctrl-C recorded: the loop saves after the current step and exits cleanly
    workdir.py      one live run per workdir; writability
    writers.py      metrics.jsonl, TensorBoard, progress
    summary.py      the accounting table at start, the before/after table at the end
    loop.py         train_and_evaluate
"""
