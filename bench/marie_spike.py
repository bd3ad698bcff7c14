"""Issue 23's export spike: what one MARIE reconstruction costs inside the swarm, per graph design.

MARIE (Zhang et al. 2024, "Decentralized Transformers with Centralized Aggregation are
Sample-Efficient Multi-Agent World Models") is not an RSSM: its state is a token history and it
predicts an observation as K tokens. Before its training is built, this script builds candidate
reconstruction graphs in PyTorch with random weights, exports each to ONNX and times one
reconstruction with onnxruntime on one intra-op thread, as the coordinator runs ``wm_step``. Each
graph holds the whole round: the VQ encode of the agents' current observations, the Perceiver
aggregations, the causal Transformer, and the VQ decode of the tokens it predicts.

Each agent's sequence is made of blocks ``[c_s, x_{s,1..K}, a_s, e_s]``: MARIE's observation
tokens x, action token a and Perceiver output e (over every agent's tokens and actions of step s),
plus ``c_s``, rmio's context token (not the paper's): a second Perceiver over the team's
observation tokens of step s alone, in which a lost agent's tokens are the ``[MASK]`` id. It is how
a lost agent's step can use the other agents' *current* observations, which MARIE itself never sees
before it predicts a step (its e_t needs a_t, which nobody has chosen yet).

Candidates (all take the window as token ids, so the state is a bounded window of ids):

* ``a-ar``: the lost agent's K tokens predicted token by token, K passes of the Transformer over
  the whole window (no key-value cache), unrolled in one graph.
* ``a-ar-cache``: the same prediction with a key-value cache that lives only within the round (one
  pass over the window, then K - 1 one-token passes); the state is still the token window.
* ``b-masked``: rmio's masked-token extension (trained by masked fine-tuning, not in the paper):
  the lost agent's block holds K ``[MASK]`` tokens after ``c_t`` and one pass predicts all K.
* ``b-raw``: ``b-masked`` fed the raw window (what a WM_REQ carries today), tokenising all l
  steps itself: no state outlives a round.
* ``c-kv``: ``b-masked`` continued from a key-value cache carried from round to round (only the
  newest block and the query are computed); the cache is the state.

    python bench/marie_spike.py export --out runs/marie_spike           # untimed
    python bench/marie_spike.py time --graphs runs/marie_spike --md bench/results/marie_spike.md

Time on a machine where nothing else runs (the background trainings paused).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rmio.train.marie_nets import GPTBlock, Perceiver, mlp, sinusoid

log = logging.getLogger("marie_spike")
DATAGRAM = 65_507


@dataclass(frozen=True)
class Preset:
    """Model sizes. ``faithful`` is the paper's Tables 2-4 (action bins from its MAMujoco setting);
    ``cpu`` is sized for a 2-core machine; ``tiny`` is for the parity test."""

    name: str
    codebook: int = 512  # N, Table 2
    tokens: int = 16  # K, Table 2
    code_dim: int = 128  # Table 2
    vq_hidden: int = 512  # Table 2
    vq_layers: int = 3  # Table 2 (linear layers of the encoder, and of the decoder)
    act_vocab: int = 256  # MAMujoco: 256 bins per action dimension (Appendix E.1)
    act_tokens: int = 1  # HalfCheetah 6x1: one joint per agent
    dim: int = 256  # Table 3
    layers: int = 10  # Table 3
    heads: int = 4  # Table 3
    perc_heads: int = 8  # Table 4 (cross and latent heads)
    perc_dim_head: int = 64  # Table 4
    perc_layers: int = 2  # Table 4

    @property
    def block(self) -> int:
        """Tokens per step and agent: c, K observation tokens, the action tokens, e."""
        return self.tokens + self.act_tokens + 2


PRESETS = {
    "faithful": Preset("faithful"),
    "cpu": Preset(
        "cpu",
        codebook=256,
        tokens=8,
        code_dim=32,
        vq_hidden=128,
        dim=64,
        layers=2,
        heads=4,
        perc_heads=4,
        perc_dim_head=16,
        perc_layers=1,
    ),
    "tiny": Preset(
        "tiny",
        codebook=16,
        tokens=3,
        code_dim=4,
        vq_hidden=16,
        act_vocab=8,
        dim=16,
        layers=1,
        heads=2,
        perc_heads=2,
        perc_dim_head=8,
        perc_layers=1,
    ),
}
CANDIDATES = ("a-ar", "a-ar-cache", "b-masked", "b-raw", "c-kv")


class Tokenizer(nn.Module):
    """MARIE's VQ-VAE on vector observations (MLP encoder and decoder, nearest-code look-up)."""

    def __init__(self, p: Preset, n: int, obs_dim: int) -> None:
        super().__init__()
        self.p = p
        hidden = [p.vq_hidden] * (p.vq_layers - 1)
        self.enc = mlp([obs_dim, *hidden, p.tokens * p.code_dim])
        self.dec = mlp([p.tokens * p.code_dim, *hidden, obs_dim])
        self.codebook = nn.Parameter(torch.randn(p.codebook, p.code_dim))
        self.register_buffer("mean", torch.randn(n, obs_dim) * 0.1)
        self.register_buffer("std", torch.rand(n, obs_dim) + 0.5)

    def encode(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, n, obs_dim) or a window (B, n, S, obs_dim), raw -> (B, n, [S,] K) code ids."""
        mean, std = (
            (self.mean, self.std) if obs.dim() == 3 else (self.mean[:, None], self.std[:, None])
        )
        z = self.enc((obs - mean) / std).unflatten(-1, (self.p.tokens, self.p.code_dim))
        book = self.codebook
        dist = (z * z).sum(-1, keepdim=True) - 2 * z @ book.T + (book * book).sum(-1)
        return dist.argmin(-1)

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, n, K) code ids -> (B, n, obs_dim) raw."""
        return self.dec(self.codebook[tokens].flatten(-2)) * self.std + self.mean


class Marie(nn.Module):
    """Tokenizer, embeddings, the two Perceivers and the shared causal Transformer."""

    def __init__(self, p: Preset, n: int, obs_dim: int, window: int) -> None:
        super().__init__()
        self.p, self.n, self.window = p, n, window
        self.tok = Tokenizer(p, n, obs_dim)
        self.obs_emb = nn.Embedding(p.codebook + 1, p.dim)  # id N: rmio's [MASK]
        self.act_emb = nn.Embedding(p.act_vocab, p.dim)
        self.pos = nn.Embedding(window * p.block, p.dim)
        self.register_buffer("agent_pos", sinusoid(n, p.dim))
        size = window * p.block
        causal = torch.full((size, size), float("-inf")).triu(1)
        self.register_buffer("causal", causal)
        perc = (n, p.dim, p.perc_heads, p.perc_dim_head, p.perc_layers)
        self.context = Perceiver(*perc)  # rmio's c_s
        self.aggregate = Perceiver(*perc)  # MARIE's e_s
        self.blocks = nn.ModuleList(GPTBlock(p.dim, p.heads) for _ in range(p.layers))
        self.ln_f = nn.LayerNorm(p.dim)
        self.head = nn.Sequential(nn.Linear(p.dim, p.dim), nn.ReLU(), nn.Linear(p.dim, p.codebook))

    def team(self, perceiver: Perceiver, emb: torch.Tensor) -> torch.Tensor:
        """(B, S, n, m, D) embeddings of S steps -> (B, n, S, D), one Perceiver call per step."""
        b, s, n, m, d = emb.shape
        ctx = (emb + self.agent_pos[:, None]).reshape(b * s, n * m, d)
        return perceiver(ctx).reshape(b, s, n, d).transpose(1, 2)

    def current(self, obs: torch.Tensor, mask: torch.Tensor):
        """VQ encode of step t: (codes of every row, codes with [MASK] on lost rows, observed)."""
        enc = self.tok.encode(obs)
        observed = mask[..., None] > 0.5
        return enc, torch.where(observed, enc, self.p.codebook), observed

    def prefix(self, tokens, actions, cur):
        """Window tokens (B, n, S, K), actions (B, n, S, A) and step t's codes (B, n, K) -> each
        agent's embedded sequence (B*n, S*block + 1, D): S full blocks, then c_t."""
        xe = self.obs_emb(torch.cat([tokens, cur[:, :, None]], 2))  # (B, n, S+1, K, D)
        ae = self.act_emb(actions)
        c = self.team(self.context, xe.transpose(1, 2))
        e = self.team(self.aggregate, torch.cat([xe[:, :, :-1], ae], 3).transpose(1, 2))
        blocks = torch.cat([c[:, :, :-1, None], xe[:, :, :-1], ae, e[:, :, :, None]], 3)
        return torch.cat([blocks.flatten(2, 3), c[:, :, -1:]], 2).flatten(0, 1)

    def transform(self, x, past=None, offset: int = 0):
        """Positions offset.. ; ``past`` (per layer) must hold exactly the ``offset`` before."""
        end = offset + x.shape[1]
        x = x + self.pos.weight[offset:end]
        bias = self.causal[offset:end, :end]
        kvs = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, bias, None if past is None else past[i])
            kvs.append(kv)
        return self.ln_f(x), kvs

    def masks(self, cur: torch.Tensor) -> torch.Tensor:
        """K [MASK] embeddings per agent row: (B*n, K, D)."""
        return self.obs_emb(torch.full_like(cur, self.p.codebook)).flatten(0, 1)

    def finish(self, enc, pred, observed):
        codes = torch.where(observed, enc, pred.reshape(enc.shape))
        return self.tok.decode(codes), codes


class Candidate(nn.Module):
    """One reconstruction round as one graph: inputs and outputs named in ``io``."""

    def __init__(self, model: Marie, kind: str) -> None:
        super().__init__()
        self.m, self.kind = model, kind

    def forward(self, tokens, actions, obs, mask):
        m, k = self.m, self.m.p.tokens
        enc, cur, observed = m.current(obs, mask)
        seq = m.prefix(tokens, actions, cur)
        if self.kind == "b-masked":
            h, _ = m.transform(torch.cat([seq, m.masks(cur)], 1))
            return m.finish(enc, m.head(h[:, -k:]).argmax(-1), observed)
        preds = []
        if self.kind == "a-ar":
            for _ in range(k):  # K passes over the whole window, unrolled
                h, _ = m.transform(seq)
                preds.append(m.head(h[:, -1]).argmax(-1))
                seq = torch.cat([seq, m.obs_emb(preds[-1])[:, None]], 1)
        else:  # a-ar-cache: the cache lives for this round only
            h, kvs = m.transform(seq)
            preds.append(m.head(h[:, -1]).argmax(-1))
            for i in range(1, k):
                h, kvs = m.transform(m.obs_emb(preds[-1])[:, None], kvs, seq.shape[1] + i - 1)
                preds.append(m.head(h[:, -1]).argmax(-1))
        return m.finish(enc, torch.stack(preds, -1), observed)


class KVCandidate(Candidate):
    """``c-kv``: its inputs are the carried cache, step t-1's ids and step t."""

    def forward(self, past_k, past_v, block_tokens, block_actions, obs, mask):
        """Block t-1 and the masked query for t on top of the cached window; the window slides by
        one block. (A deployable version needs relative positions: absolute ones shift as the
        window slides; this graph only has the right cost.)"""
        m, p = self.m, self.m.p
        enc, cur, observed = m.current(obs, mask)
        xe = m.obs_emb(torch.stack([block_tokens, cur], 2))  # (B, n, 2, K, D)
        ae = m.act_emb(block_actions)[:, :, None]
        c = m.team(m.context, xe.transpose(1, 2))
        e = m.team(m.aggregate, torch.cat([xe[:, :, :1], ae], 3).transpose(1, 2))
        new = torch.cat([c[:, :, :1], xe[:, :, 0], ae[:, :, 0], e, c[:, :, 1:]], 2).flatten(0, 1)
        new = torch.cat([new, m.masks(cur)], 1)
        past = [(past_k[:, i].flatten(0, 1), past_v[:, i].flatten(0, 1)) for i in range(p.layers)]
        plen = past_k.shape[-2]
        h, kvs = m.transform(new, past, plen)
        pred = m.head(h[:, -p.tokens :]).argmax(-1)
        recon, codes = m.finish(enc, pred, observed)

        def slide(i: int) -> torch.Tensor:  # drop the oldest block, keep block t-1, not the query
            return torch.stack([kv[i][:, :, p.block : plen + p.block] for kv in kvs], 1)

        shape = (-1, p.layers, self.m.n, p.heads, plen, p.dim // p.heads)
        return recon, codes, slide(0).reshape(shape), slide(1).reshape(shape)


class RawCandidate(Candidate):
    """``b-raw``: ``b-masked`` fed the raw window a WM_REQ carries today (observations, zero rows
    where lost, actions in the action box, masks); it tokenises all l steps itself, so no state
    outlives a round."""

    def forward(self, obs, actions, mask):
        m, p = self.m, self.m.p
        enc = m.tok.encode(obs)  # (B, n, l, K)
        observed = mask[..., None] > 0.5
        ids = torch.where(observed, enc, p.codebook)
        bins = ((actions + 1) * (0.5 * p.act_vocab)).floor().clamp(0, p.act_vocab - 1).long()
        cur = ids[:, :, -1]
        seq = m.prefix(ids[:, :, :-1], bins, cur)
        h, _ = m.transform(torch.cat([seq, m.masks(cur)], 1))
        pred = m.head(h[:, -p.tokens :]).argmax(-1)
        return m.finish(enc[:, :, -1], pred, observed[:, :, -1])


def io(kind: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    outs = ("obs_recon", "tokens_t")
    if kind == "b-raw":
        return ("obs", "actions", "mask"), outs
    if kind == "c-kv":
        ins = ("past_k", "past_v", "block_tokens", "block_actions", "obs", "mask")
        return ins, (*outs, "present_k", "present_v")
    return ("tokens", "actions", "obs", "mask"), outs


def example(
    p: Preset, kind: str, n: int, obs_dim: int, window: int, batch: int, seed: int = 0
) -> dict[str, np.ndarray]:
    """Random inputs for one round: 2 of the n agents lost at t, one lost step in the window."""
    rng = np.random.default_rng(seed)
    hist = window - 1
    tokens = rng.integers(0, p.codebook, (batch, n, hist, p.tokens))
    tokens[:, 0, max(0, hist - 3)] = p.codebook  # agent 0 lost 3 steps ago: [MASK] ids
    actions = rng.integers(0, p.act_vocab, (batch, n, hist, p.act_tokens))
    mask = np.ones((batch, n), np.float32)
    mask[:, [1, n - 1]] = 0.0
    obs = (rng.standard_normal((batch, n, obs_dim)) * mask[..., None]).astype(np.float32)
    if kind == "b-raw":
        masks = np.ones((batch, n, window), np.float32)
        masks[:, :, -1] = mask
        masks[:, 0, max(0, hist - 3)] = 0.0
        window_obs = rng.standard_normal((batch, n, window, obs_dim)) * masks[..., None]
        return {
            "obs": window_obs.astype(np.float32),
            "actions": rng.uniform(-1, 1, (batch, n, hist, p.act_tokens)).astype(np.float32),
            "mask": masks,
        }
    if kind != "c-kv":
        return {"tokens": tokens, "actions": actions, "obs": obs, "mask": mask}
    plen, dh = (window - 2) * p.block, p.dim // p.heads
    kv = (batch, p.layers, n, p.heads, plen, dh)
    return {
        "past_k": rng.standard_normal(kv).astype(np.float32),
        "past_v": rng.standard_normal(kv).astype(np.float32),
        "block_tokens": tokens[:, :, -1],
        "block_actions": actions[:, :, -1],
        "obs": obs,
        "mask": mask,
    }


def state_bytes(p: Preset, kind: str, n: int, window: int, obs_dim: int = 9) -> dict[str, int]:
    """What would travel: per step the agents' code and action ids (int16: N <= 512) and a lost
    flag (``b-raw``: float32 observations and actions, as a WM_REQ); the c-kv state is its cache
    (float32 keys and values)."""
    if kind == "b-raw":
        step = n * (obs_dim + p.act_tokens) * 4 + n
        return {"step": step, "state": (window - 1) * step + n * obs_dim * 4}
    step = n * (p.tokens + p.act_tokens) * 2 + n
    if kind == "c-kv":
        plen = (window - 2) * p.block
        return {"step": step, "state": 2 * p.layers * n * plen * p.dim * 4}
    return {"step": step, "state": (window - 1) * step}


def build(p: Preset, kind: str, n: int, obs_dim: int, window: int, seed: int = 0) -> Candidate:
    torch.manual_seed(seed)
    cls = {"c-kv": KVCandidate, "b-raw": RawCandidate}.get(kind, Candidate)
    return cls(Marie(p, n, obs_dim, window), kind).eval()


def export(cand: Candidate, path: Path, n: int, obs_dim: int, window: int) -> None:
    """ONNX with a dynamic batch axis, exported at batch 2 (rmio's exporter, opset 18)."""
    from rmio.train.export import export_onnx

    ins, outs = io(cand.kind)
    feeds = example(cand.m.p, cand.kind, n, obs_dim, window, batch=2)
    args = tuple(torch.from_numpy(feeds[name]) for name in ins)
    with torch.no_grad():
        export_onnx(cand, args, path, ins, outs)


def parity(cand: Candidate, path: Path, n: int, obs_dim: int, window: int) -> dict[str, float]:
    """onnxruntime against PyTorch at batch 1, the swarm's (not the export batch of 2)."""
    from rmio.runtime.models import make_session

    ins, outs = io(cand.kind)
    feeds = example(cand.m.p, cand.kind, n, obs_dim, window, batch=1, seed=1)
    with torch.no_grad():
        ref = cand(*(torch.from_numpy(feeds[name]) for name in ins))
    got = make_session(path).run(list(outs), feeds)
    return {
        "recon_max_abs": float(np.abs(got[0] - ref[0].numpy()).max()),
        "tokens_equal": float(np.array_equal(got[1], ref[1].numpy())),
    }


def time_graph(
    path: Path, feeds: dict[str, np.ndarray], calls: int, budget_s: float, least: int = 5
) -> list[float]:
    """Milliseconds of ``session.run`` on one intra-op thread, back to back, after 2 warm-ups; stops
    early once ``budget_s`` is spent (after at least ``least`` calls). Also returns the thread's
    CPU time per call, which other processes on a loaded machine inflate far less than the wall
    time."""
    from rmio.runtime.models import make_session

    sess = make_session(path, threads=1)
    for _ in range(2):
        sess.run(None, feeds)
    out: list[float] = []
    cpu: list[float] = []
    start = time.perf_counter()
    while len(out) < calls and (len(out) < least or time.perf_counter() - start < budget_s):
        t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        sess.run(None, feeds)  # one intra-op thread: the graph runs on this thread
        cpu.append((time.thread_time_ns() - c0) / 1e6)
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return out, cpu


def rmiov2_times(bundle: str, calls: int, window: int) -> tuple[list[float], list[float], int]:
    """The committed RMIOv2 bundle's round for comparison: ``WorldModelRunner.replay`` over l."""
    from rmio.models import find_bundle
    from rmio.runtime.models import WorldModelRunner

    wm = WorldModelRunner(find_bundle(bundle))
    spec = wm.manifest.spec
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((window, spec.n_agents, spec.obs_dim)).astype(np.float32)
    acts = rng.uniform(-1, 1, (window, spec.n_agents, spec.action_dim)).astype(np.float32)
    masks = np.ones((window, spec.n_agents), np.float32)
    masks[-1, [1, spec.n_agents - 1]] = 0
    for _ in range(2):
        wm.replay(obs, acts, masks)
    out, cpu = [], []
    for _ in range(calls):
        t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
        wm.replay(obs, acts, masks)
        cpu.append((time.thread_time_ns() - c0) / 1e6)
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return out, cpu, spec.n_agents * spec.obs_dim * 4 * window


def _load(path: Path, default: dict) -> dict:
    return json.loads(path.read_text()) if path.exists() else default


def cmd_export(args: argparse.Namespace) -> None:
    """Export (and check) the asked graphs into ``--out``; graphs.json keeps the others'."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shape = {"n": args.agents, "obs_dim": args.obs_dim, "window": args.window}
    meta = _load(out / "graphs.json", {**shape, "graphs": {}})
    if any(meta[k] != v for k, v in shape.items()):
        meta = {**shape, "graphs": {}}  # another shape: start over
    for preset in args.presets.split(","):
        p = PRESETS[preset]
        for kind in args.candidates.split(","):
            path = out / f"{preset}-{kind}.onnx"
            cand = build(p, kind, args.agents, args.obs_dim, args.window)
            t0 = time.perf_counter()
            export(cand, path, args.agents, args.obs_dim, args.window)
            check = parity(cand, path, args.agents, args.obs_dim, args.window)
            meta["graphs"][path.name] = {
                "preset": asdict(p),
                "kind": kind,
                "params": sum(t.numel() for t in cand.parameters()),
                "export_s": round(time.perf_counter() - t0, 1),
                **check,
                **state_bytes(p, kind, args.agents, args.window, args.obs_dim),
            }
            log.info("%s: %s", path.name, meta["graphs"][path.name])
            (out / "graphs.json").write_text(json.dumps(meta, indent=1))


def cmd_time(args: argparse.Namespace) -> None:
    """Time the asked presets' graphs (timings.json keeps the others'), then write the table of
    everything timed so far."""
    graphs = Path(args.graphs)
    meta = json.loads((graphs / "graphs.json").read_text())
    n, obs_dim, window = meta["n"], meta["obs_dim"], meta["window"]
    timings = _load(graphs / "timings.json", {})
    wanted = set(args.presets.split(","))
    for name, g in meta["graphs"].items():
        p = Preset(**g["preset"])
        if p.name not in wanted or g["kind"] not in args.candidates.split(","):
            continue
        feeds = example(p, g["kind"], n, obs_dim, window, batch=1)
        ms, cpu = time_graph(graphs / name, feeds, args.calls, args.budget_s, args.min_calls)
        timings[name] = {"ms": ms, "cpu_ms": cpu, "load": os.getloadavg()[0]}
        p50, p99 = np.percentile(ms, [50, 99])
        log.info("%s: p50 %.2f ms p99 %.2f ms (%d calls)", name, p50, p99, len(ms))
    if args.bundle:
        ref, cpu, ref_bytes = rmiov2_times(args.bundle, args.calls, window)
        timings["rmiov2"] = {"ms": ref, "cpu_ms": cpu, "bytes": ref_bytes, "bundle": args.bundle}
        timings["rmiov2"]["load"] = os.getloadavg()[0]
    timings["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    (graphs / "timings.json").write_text(json.dumps(timings))
    rows = [
        (meta["graphs"][k]["preset"]["name"], meta["graphs"][k]["kind"], meta["graphs"][k], v)
        for k, v in timings.items()
        if k in meta["graphs"]
    ]
    Path(args.md).write_text(render(rows, timings.get("rmiov2"), meta, args, timings["date"]))


def render(rows, ref, meta, args, date: str) -> str:
    cpuinfo = Path("/proc/cpuinfo")
    names = (
        [
            ln.split(":", 1)[1].strip()
            for ln in cpuinfo.read_text().splitlines()
            if ln.startswith("model name")
        ]
        if cpuinfo.exists()
        else []
    )
    host = names[0] if names else platform.machine()
    lines = [
        f"# MARIE reconstruction graphs, one round for {meta['n']} agents at l = {meta['window']}"
        f" ({os.cpu_count()}-core CPU VM, {host}, {date}; background trainings paused, other "
        "engineers' test runs may still have been running)",
        "",
        "onnxruntime, one intra-op thread, batch 1, `session.run` back to back after 2 warm-ups "
        "(wall time, and the calling thread's CPU time, which the graph runs on); "
        f"obs_dim {meta['obs_dim']} (HalfCheetah 6x1). Every graph computes all {meta['n']} rows "
        "(the cost of a round where every agent is lost). State: what would travel per step "
        "(code and action ids as int16 plus a lost flag per agent) and the whole state a round "
        f"starts from; a datagram carries at most {DATAGRAM:,} bytes. Random weights.",
        "",
        "| preset | candidate | params | wall p50 / p99 / max ms | CPU p50 / p99 ms | calls | "
        "state per step B | state B | fits a datagram | ONNX parity (recon max abs, tokens "
        "equal) | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def times(t: dict) -> str:
        ms, cpu = t["ms"], t.get("cpu_ms", [float("nan")])
        p50, p99 = np.percentile(ms, [50, 99])
        c50, c99 = np.percentile(cpu, [50, 99])
        return f"{p50:.2f} / {p99:.2f} / {max(ms):.2f} | {c50:.2f} / {c99:.2f} | {len(ms)}"

    for preset, kind, g, t in rows:
        lines.append(
            f"| {preset} | {kind} | {g['params'] / 1e6:.2f} M | {times(t)} | {g['step']:,} | "
            f"{g['state']:,} | {'yes' if g['state'] <= DATAGRAM else 'no'} | "
            f"{g['recon_max_abs']:.1e}, {'yes' if g['tokens_equal'] else 'NO'} | "
            f"{t['load']:.1f} |"
        )
    if ref:
        lines.append(
            f"| RMIOv2 `{ref['bundle']}` | `wm_step` replayed over l | - | {times(ref)} | - | "
            f"{ref['bytes']:,} (raw window) | yes | - | {ref.get('load', float('nan')):.1f} |"
        )
    sizes = ", ".join(
        f"{name}: K {p.tokens}, N {p.codebook}, code {p.code_dim}, VQ {p.vq_layers}x{p.vq_hidden}, "
        f"D {p.dim}, {p.layers} layers x {p.heads} heads, Perceiver {p.perc_layers} layers x "
        f"{p.perc_heads} heads x {p.perc_dim_head}, block {p.block} tokens"
        for name, p in PRESETS.items()
        if name in {r[0] for r in rows}
    )
    lines += [
        "",
        f"Presets: {sizes}. Commands: `python bench/marie_spike.py export --out runs/marie_spike`, "
        "then for each preset P, in its own run with the background trainings paused, `python "
        "bench/marie_spike.py time --graphs runs/marie_spike --presets P` (the last run: "
        f"`--presets {args.presets} --candidates {args.candidates} "
        f"--calls {args.calls} --budget-s {args.budget_s:g} --min-calls {args.min_calls}`). "
        "load: the 1-minute load average when the row was timed.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="build, export and check every graph (untimed)")
    ex.add_argument("--out", required=True)
    ex.add_argument("--presets", default="faithful,cpu")
    ex.add_argument("--candidates", default=",".join(CANDIDATES))
    ex.add_argument("--agents", type=int, default=6)
    ex.add_argument("--obs-dim", type=int, default=9)
    ex.add_argument("--window", type=int, default=20)
    tm = sub.add_parser("time", help="time every exported graph, nothing else running")
    tm.add_argument("--graphs", required=True)
    tm.add_argument("--md", default="bench/results/marie_spike.md")
    tm.add_argument("--calls", type=int, default=300)
    tm.add_argument("--budget-s", type=float, default=20.0, help="per graph")
    tm.add_argument("--min-calls", type=int, default=5)
    tm.add_argument("--presets", default="faithful,cpu")
    tm.add_argument("--candidates", default=",".join(CANDIDATES))
    tm.add_argument("--bundle", default="halfcheetah_6x1", help="RMIOv2 row ('' for none)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    (cmd_export if args.cmd == "export" else cmd_time)(args)


if __name__ == "__main__":
    main()
