"""One run: a config -> a trained adapter and its record.

    preflight.py   everything that can be judged before anything is written
    components.py  the model with LoRA, optimizer, schedule, data and batch plan, built from the config
    resources.py   base models and tokenised data kept between the runs of one process (a sweep worker)
    loop.py        the training loop (Accelerate): steps, evaluation, logging, pruning and signal checks
    checkpoint.py  what resume needs: trainable weights, optimizer, scheduler, RNG, data position, scaler
    memory.py      the run's own peak memory: its tensors' peak and the process's resident set
    tracking.py    W&B (offline by default) or nothing
    signals.py     INT/TERM/USR1 -> a clean stop at the next step
    lifecycle.py   train(cfg): lock, resume or start, run, record, publish
    reproduce.py   `lorasweep reproduce HASH`: rerun a stored run from its config and check the result

May import: config, data, model, step, estimate, runs, lora, slurm (its identity) and the top-level helpers.
"""
