"""Tasks: each is a config dataclass plus ``run(config) -> summary dict``.

- :mod:`droplab.tasks.classify`: train an image classifier with dropout, evaluate it
  (deterministic and MC dropout, calibration, out-of-distribution detection).
"""
