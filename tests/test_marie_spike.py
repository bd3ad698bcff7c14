"""bench/marie_spike.py (issue 23's export spike): every candidate reconstruction graph exports to
ONNX at a tiny size and onnxruntime gives what PyTorch gives, on a batch other than the export's.

The graphs end in argmax/argmin (VQ look-up, token prediction), so the comparison is exact on the
ids and close on the decoded observations; a graph that the exporter specialised to its example
batch of 2 would fail on the batch of 3 used here.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxscript")

ROOT = Path(__file__).resolve().parents[1]


def _spike():
    spec = importlib.util.spec_from_file_location("marie_spike", ROOT / "bench" / "marie_spike.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


SPIKE = _spike()
N, OBS_DIM, WINDOW = 3, 5, 3


@pytest.mark.parametrize("kind", SPIKE.CANDIDATES)
def test_candidate_exports_and_matches_torch(kind: str, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    p = SPIKE.PRESETS["tiny"]
    cand = SPIKE.build(p, kind, N, OBS_DIM, WINDOW)
    path = tmp_path / f"{kind}.onnx"
    SPIKE.export(cand, path, N, OBS_DIM, WINDOW)

    from rmio.runtime.models import make_session

    ins, outs = SPIKE.io(kind)
    sess = make_session(path)
    assert [i.name for i in sess.get_inputs()] == list(ins)
    feeds = SPIKE.example(p, kind, N, OBS_DIM, WINDOW, batch=3, seed=1)
    with torch.no_grad():
        ref = [t.numpy() for t in cand(*(torch.from_numpy(feeds[name]) for name in ins))]
    got = sess.run(list(outs), feeds)
    assert len(got) == len(ref) == len(outs)
    recon, codes = got[0], got[1]
    assert recon.shape == (3, N, OBS_DIM) and codes.shape == (3, N, p.tokens)
    np.testing.assert_array_equal(codes, ref[1])
    np.testing.assert_allclose(recon, ref[0], atol=1e-5, rtol=1e-5)
    for a, b in zip(got[2:], ref[2:], strict=True):  # c-kv: the slid cache
        assert a.shape == b.shape == feeds["past_k"].shape
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    # observed rows keep their own VQ codes; lost rows (1 and n-1 in the example) get predicted ones
    now = feeds["obs"][:, :, -1] if kind == "b-raw" else feeds["obs"]  # b-raw: the raw window
    enc = cand.m.tok.encode(torch.from_numpy(now)).numpy()
    np.testing.assert_array_equal(codes[:, 0], enc[:, 0])
    assert (codes >= 0).all() and (codes < p.codebook).all()  # never the [MASK] id


def test_state_fits_a_datagram_except_the_kv_cache() -> None:
    """The spike's wire figures at MARIE's sizes: a token window fits one datagram, a cache
    does not."""
    p = SPIKE.PRESETS["faithful"]
    window = SPIKE.state_bytes(p, "b-masked", 6, 20)
    assert window["step"] == 6 * (16 + 1) * 2 + 6
    assert window["state"] == 19 * window["step"] < SPIKE.DATAGRAM
    assert SPIKE.state_bytes(p, "c-kv", 6, 20)["state"] > SPIKE.DATAGRAM
