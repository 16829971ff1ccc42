"""``python -m droplab …`` (also what ``torchrun -m droplab train …`` runs)."""

from droplab.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
