"""Serving many adapters on one base: `lorasweep predict` (predict.py) over checked JSON-lines requests
(requests.py), each batch mixing adapters through lora/multi.py without splitting or merging.

May import: training (its model cache), config, data, model, lora and the top-level helpers.
"""
