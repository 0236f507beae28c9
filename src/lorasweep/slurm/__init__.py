"""Everything lorasweep knows about SLURM, in one place:

- render.py   the cluster config checked, and slurm/*.sbatch filled from it (#SBATCH lines, setup, launcher)
- submit.py   `train --slurm`: check, render, save the script beside its logs, sbatch, return at once
- client.py   the client commands (sbatch --test-only, sbatch --parsable, sinfo) with timeouts
- identity.py who this process is to SLURM (the job's `SLURM_*` environment)
- queue.py    the job ids recorded on a study, and their squeue states

slurm/ knows nothing of sweeps: sweep/ uses it (identity, queue, and render/client in sweep/slurm_array.py for
`sweep --slurm`), never the other way round. The sbatch templates and their shared launcher (slurm/launch.sh)
are the data package lorasweep.slurm_templates. Signals (INT/TERM/USR1) stay in
lorasweep/training/signals.py: a Ctrl-C on a laptop goes through them too.

May import: config (a `train --slurm` composes its config), sources, errors, fileio.
"""
