"""MODEL_CARD.md of an exported bundle: which world-model variant it holds and what that means.

`rmio export` writes it from the manifest, so a bundle of any variant says what it is without its
run directory. A card someone wrote by hand (the shipped bundles') is never overwritten.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rmio.runtime.bundle import Manifest

MARKER = "<!-- written by rmio export; edit freely, a card without this line is kept -->"

VARIANTS: dict[str, str] = {
    "rmiov2": "RMIOv2: observation and action fusion over the agents, adaptive reward smoothing, "
    "masked fine-tuning; a lost agent's latent comes from the posterior over the fused joint "
    "observation.",
    "rmiov2-no-obs-fusion": "RMIOv2 without observation fusion (Table 1, variant a).",
    "rmiov2-no-action-fusion": "RMIOv2 without action fusion (Table 1, variant b).",
    "rmiov2-no-fusion": "RMIOv2 without either fusion (Table 1, variant c).",
    "gawm": "GAWM: RMIOv2's architecture with fixed-window reward smoothing, meant without masked "
    "fine-tuning (the budget's p_mask says what was run).",
    "mamba": "MAMBA as a baseline of the paper's Fig. 8: no observation fusion, three attention "
    "layers of action fusion, no reward smoothing, and a lost agent's latent taken from the prior "
    "p(z | h), so nothing the other agents observe at that step can inform it. MAMBA's original "
    "actor acts on the world model's latents; rmio keeps its observation-based r-MAPPO actor for "
    "every variant, so only the reconstruction of lost observations differs.",
    "marie": "MARIE (Decentralized Transformers with Centralized Aggregation are Sample-Efficient "
    "Multi-Agent World Models) as a world model for reconstruction: a VQ tokenizer, a shared "
    "causal Transformer over each agent's tokens, Perceiver aggregation, plus rmio's masked-token "
    "extension (not the paper's): a context token over the team's current tokens and masked "
    "fine-tuning, so a lost agent's tokens are predicted as [MASK], all at once, in one window "
    "graph per round (no state carried between rounds).",
    "rmio-v1": "RMIO v1 as a baseline of the paper's Fig. 8: a MAMBA-style world model (no "
    "observation fusion, lost agents predicted by the prior) plus a correction block (MLP and "
    "self-attention over the concatenated joint observation) trained with the world model frozen, "
    "inside wm_step.onnx; wm_step_pretrain.onnx is the prior prediction alone. What the papers "
    "leave open and what rmio chose is written in rmio.train.correction. rmio keeps its "
    "observation-based actor for every variant.",
}


def _fmt(value: Any) -> str:
    return f"{value:.2e}" if isinstance(value, float) else str(value)


def model_card(manifest: Manifest) -> str:
    """The card's markdown."""
    algo = manifest.budget.get("wm_algo", "rmiov2")
    model = manifest.config.get("world_model", {}).get("model", {})
    switches = ("obs_fusion", "action_fusion", "action_fusion_layers", "lost_latent", "correction")
    smoothing = manifest.config.get("world_model", {}).get("smoothing", {}).get("mode")
    lines = [
        MARKER,
        f"# {manifest.spec.name}: {algo} world model",
        "",
        VARIANTS.get(algo, f"World-model variant {algo}."),
        "",
        "| file | what |",
        "|---|---|",
    ]
    what = {
        "actor": "observation-based actor (local observation, id, available actions -> action)",
        "wm_step": f"one {algo} world-model step after fine-tuning"
        if manifest.wm_window is None
        else f"{algo}'s window graph after fine-tuning: one whole reconstruction round",
        "wm_step_pretrain": "the same world model before fine-tuning (the no-finetune baseline)",
    }
    if manifest.actor_state is not None:
        what["actor"] = (
            f"recurrent actor ({manifest.budget.get('policy_algo') or 'policy'}): local "
            "observation, id, available actions and hidden state -> action and next hidden state"
        )
    lines += [f"| `{name}` | {what.get(role, role)} |" for role, name in manifest.files.items()]
    lines += ["", "## Variant", ""]
    lines += [f"- `world_model.model.{k}`: {model[k]}" for k in switches if k in model]
    lines += [f"- `world_model.smoothing.mode`: {smoothing}", "", "## Budget", ""]
    lines += [f"- {k}: {v}" for k, v in manifest.budget.items() if v is not None]
    parity = {k: v for k, v in manifest.metrics.items() if "parity" in k and v is not None}
    if parity:
        lines += ["", "## Parity at export (onnxruntime against PyTorch)", ""]
        lines += [f"- {k}: {_fmt(v)}" for k, v in parity.items()]
    return "\n".join(lines) + "\n"


def write_model_card(bundle: Path, manifest: Manifest) -> Path | None:
    """Write ``bundle/MODEL_CARD.md`` unless a hand-written card is there; returns its path."""
    path = bundle / "MODEL_CARD.md"
    if path.exists() and not path.read_text(encoding="utf-8").startswith(MARKER):
        return None
    path.write_text(model_card(manifest), encoding="utf-8")
    return path
