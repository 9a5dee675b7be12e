"""Training components: each knows nothing of the recipe (``mabe.train``) that wires them together.

    device.py       device, precision, autocast, backend flags, seeds, CPU threads: the one resolver
    losses.py       scene / pair losses (DDP-exact means), pos_weight, the validation loss
    schedule.py     warmup + plateau learning-rate schedule
    optim.py        AdamW parameter groups, fused/capturable AdamW, lr get/set, resume loading
    augment.py      noise and mixup on the device, per-micro-batch generators
    batches.py      the batch source: resident DeviceStore or a DataLoader
    step.py         the one training step (accumulation, non-finite skip, clipping, CUDA graph)
    data.py         the cache -> normalised train / validation TrackSets
    progress.py     counters with state_dict(), resume conversion, checkpoint writing
    distributed.py  torchrun environment and collectives
    runlog.py       log.txt, metrics.csv, status.json, TensorBoard; graceful stop on signals

Components import config, errors, io, schema, data, prepare (the cache), windows, models, checkpoint,
runs (run-directory files) and each other, never ``mabe.train``, ``mabe.launch``, ``mabe.cli``, ``mabe.bench`` or ``mabe.report``.
"""
