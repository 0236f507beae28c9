"""The run store on disk: one folder per config hash (store.py), one process per folder (lock.py), the row a
run shows in tables (rows.py) and every metric a run reports, with its meaning and direction (metrics.py).

May import: lora and data (for a run's labels), slurm (a lock records its job), config and the top-level helpers.
Never training/: runs are written by the lifecycle and read by everything above it.
"""
