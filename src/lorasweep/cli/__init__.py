"""The command line: `lorasweep <command>` and what it prints.

    main.py            the commands (train, estimate, data, runs, compare, reproduce, predict, demo, ...)
    sweep_commands.py  sweep, worker, status, report, dashboard
    options.py         options shared by several commands
    console.py         what a command prints before and after the work (the plan, the summary)
    compare.py         `runs` and `compare`: tables and a loss-curve page over the run store
    demo.py            `lorasweep demo`: what LoRA saves, measured

May import every other part (it is the top); nothing imports it. `main` is the console script's entry point.
"""

from .main import main

__all__ = ["main"]
