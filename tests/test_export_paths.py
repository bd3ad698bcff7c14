"""What the exporter writes names no path of the machine that exported (issue 17, part 1): ONNX
graphs without the exporter's per-node stack traces, portable policy paths in the manifest."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from rmio.train.export import export_onnx, portable_path


def test_portable_path_names_no_machine_path(monkeypatch, tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    assert portable_path("runs/pol/hc/policy.pt") == "runs/pol/hc/policy.pt"
    assert portable_path(str(tmp_path / "runs/a/policy.pt")) == "runs/a/policy.pt"
    assert portable_path("/srv/x/runs/pol/hc/policy.pt") == "runs/pol/hc/policy.pt"
    assert portable_path("/srv/x/policy.pt") == "policy.pt"
    assert portable_path(None) is None


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)
        )

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)


def test_exported_graph_carries_no_stack_traces(tmp_path) -> None:
    module = Tiny()
    path = tmp_path / "g.onnx"
    export_onnx(module.eval(), (torch.randn(2, 4),), path, ("obs",), ("action",))
    graph = onnx.load(str(path))
    keys = {p.key for node in graph.graph.node for p in node.metadata_props}
    assert graph.graph.node and "pkg.torch.onnx.stack_trace" not in keys
    assert not re.search(rb"/(work|tmp|root|home)/", Path(path).read_bytes())
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    (out,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"obs": x}
    )
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    assert np.abs(out - want).max() < 1e-5
