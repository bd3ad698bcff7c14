"""The one vocabulary of what a blind agent acts on, from the CLI to the settings, the wire (an
ACTION's ``kind``), the counters and the reports: a leaf module, so every layer spells it the same
way."""

from __future__ import annotations

STRATEGIES = ("world-model", "hold-last", "zero-fill")
"""What a blind agent acts on in the swarm: the world model's reconstruction, its last real
observation, or zeros."""
EVAL_STRATEGIES = (*STRATEGIES, "no-finetune")
"""In-process evaluation adds the world model as it was before masked fine-tuning."""
ACT_KINDS = ("obs", *STRATEGIES, "fallback")
"""What an action was computed from: the agent's own observation, one of the strategies, or
hold-last after a reconstruction missed its deadline."""
LEGACY = {"wm": "world-model", "hold": "hold-last", "zero": "zero-fill"}
"""The short names of earlier versions, still accepted in settings files."""
