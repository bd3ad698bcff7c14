"""Evaluation of bundles, on the application side of the runtime: the in-process reference that the
swarm must reproduce, the robustness sweep (the paper's curve and its AUC), its report, and the
in-process baselines added to a swarm report. It depends on ``rmio.runtime`` and ``rmio.envs``;
nothing in the runtime depends on it."""
