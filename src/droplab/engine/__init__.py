"""The training engine: the loop, its callbacks, optimisers and LR schedules, run state."""
