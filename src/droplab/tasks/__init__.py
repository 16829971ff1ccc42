"""Tasks: each is a config dataclass plus ``run(config) -> summary dict``, one per command.

- :mod:`.classify` — ``droplab train`` / ``droplab evaluate``;
- :mod:`.finetune` — ``droplab finetune`` (transfer learning with a dropout head);
- :mod:`.gan` — ``droplab gan`` (DCGAN with dropout, FID/KID/IS);
- :mod:`.style` — ``droplab stylize``, ``style-train``, ``style-apply``;
- :mod:`.sweep` — ``droplab sweep`` (choosing the dropout rate on an Optuna study).

No task imports another (the import-linter contract in ``pyproject.toml``); what two tasks
share lives below them (:mod:`droplab.engine`, e.g. the classifier recipe).
"""
