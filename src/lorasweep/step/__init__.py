"""What one training step is made of: the optimizer (optim.py), each task's loss and evaluation (tasks.py; the
causal-LM loss at the trained positions only, lm_loss.py; the figures each task is judged by, scoring.py) and
what the processes of a run tell each other (ranks.py). Shared by the run (training/) and the memory estimate
(estimate/), which runs the same step on fake tensors.

May import: lora, model, data, choices, errors.
"""
