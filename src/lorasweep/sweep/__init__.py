"""Optuna sweeps over LoRA rank, α and target sets on top of train(cfg).

    spec.py           a sweep file (sweeps/*.yaml): the search space, objective, pruner, budget
    study.py, storage.py, samplers.py   the Optuna study, its storage (SQLite, journal, PostgreSQL), samplers
    launch.py         `lorasweep sweep SPEC`: the study, then local workers (or a SLURM array: slurm_array.py)
    placement.py      how many workers (`--workers auto`), each one's GPU, or a pack instead (`--pack auto`)
    worker.py         one worker: ask, train, tell, until the budget is spent; packed.py: K trials at once
    pack_plan.py      how many trials a worker packs; memory_estimate.py: `sweep --estimate`
    heartbeat.py, retry.py, outcome.py  dead workers' trials re-queued, failed trials retried, the exit code
    status.py, dashboard.py, report/   what a sweep shows: status, optuna-dashboard, the report

May import: training, pack, runs, estimate, config, slurm and the layers below them; never cli/.
"""
