"""What the actor does with a reconstruction: policy-relevant metrics beside L_rec (issue 25).

L_rec weighs every observation feature alike; the actor does not. Two reconstructions with the same
L_rec can make the blind agent act identically or very differently, and the return follows the
action, not the loss. So for every lost agent-step the deployed actor (the bundle's ``actor.onnx``,
as the swarm runs it) is applied twice, to the true observation and to the strategy's
reconstruction, with the same agent id and available actions, and the outputs are compared:

* continuous actions: ``action_mae``, the mean absolute difference of the actions the agent would
  execute (per action dimension);
* discrete actions: ``action_changed``, the probability that the chosen action differs, and
  ``action_kl``, KL(pi(.|o) || pi(.|o^)) between the two action distributions when the actor graph
  exports its probabilities (an ``action_probs`` output), which shows changes before they flip the
  argmax.

Lower is better for all three; they are reported per test-time p_mask for the world models and for
hold-last and zero-fill, so a user can see before deploying whether the reconstruction serves the
policy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rmio.errors import RmioError
from rmio.runtime.bundle import load_manifest
from rmio.runtime.models import categorical_kl, make_session

POLICY_METRICS = ("action_mae", "action_changed", "action_kl")


class PolicyProbe:
    """The bundle's actor, applied to true and reconstructed observations of lost agents."""

    def __init__(self, bundle: Path) -> None:
        self.bundle = Path(bundle)
        self.manifest = load_manifest(self.bundle)
        if "actor" not in self.manifest.files:
            raise ValueError(f"bundle '{bundle}' has no actor.onnx")
        if self.manifest.actor_state is not None:
            raise RmioError(
                f"bundle '{bundle}': its actor is recurrent, and the policy metrics apply it to "
                "single held-out steps without the hidden state their episode would have built"
            )
        self.session = make_session(self.bundle / self.manifest.files["actor"])
        self.discrete = self.manifest.spec.discrete
        self.outputs = ["action"] + (
            ["action_probs"]
            if any(o.name == "action_probs" for o in self.session.get_outputs())
            else []
        )

    def _run(self, obs: np.ndarray, ids: np.ndarray, avail: np.ndarray | None) -> list[np.ndarray]:
        feed: dict[str, np.ndarray] = {"obs": obs.astype(np.float32), "agent_id": ids}
        if self.discrete:
            if avail is None:
                avail = np.ones((len(obs), self.manifest.spec.action_dim), bool)
            feed["avail_actions"] = avail.astype(bool)
        return self.session.run(self.outputs, feed)

    def compare(
        self,
        true_obs: np.ndarray,
        recon_obs: np.ndarray,
        agent_ids: np.ndarray,
        avail: np.ndarray | None = None,
        chunk: int = 8192,
    ) -> dict[str, np.ndarray]:
        """Per row: the metrics of this action space ((N,) arrays), for N lost agent-steps."""
        out: dict[str, list[np.ndarray]] = {}
        ids = np.asarray(agent_ids, np.int64)
        for s in range(0, len(ids), chunk):
            sl = slice(s, s + chunk)
            av = None if avail is None else avail[sl]
            true = self._run(true_obs[sl], ids[sl], av)
            recon = self._run(recon_obs[sl], ids[sl], av)
            if self.discrete:
                a, b = true[0].reshape(-1), recon[0].reshape(-1)
                out.setdefault("action_changed", []).append((a != b).astype(np.float64))
                if len(true) > 1:
                    kl = categorical_kl(true[1], recon[1])
                    out.setdefault("action_kl", []).append(kl.astype(np.float64))
            else:
                diff = np.abs(true[0] - recon[0]).reshape(len(true[0]), -1)
                out.setdefault("action_mae", []).append(diff.mean(-1).astype(np.float64))
        return {k: np.concatenate(v) for k, v in out.items()}
