"""`rmio bundle`: an actor trained elsewhere (BenchMARL, TorchRL, cleanrl, ... exported to ONNX)
plus an rmio world model, made into a bundle the swarm and the evaluations run.

The foreign actor keeps its own graph; it is wrapped so that the bundle's actor has exactly the
contract of docs/BUNDLE.md: inputs ``obs`` (B, obs_dim) float32, ``agent_id`` (B,) int64 and, for
discrete tasks, ``avail_actions`` (B, n_actions) bool; output ``action``. The wrapper renames and
casts the actor's inputs, adds the inputs it does not use (a shared-parameter actor may take no
agent id), and post-processes its output: continuous actions are clipped to the task's action box
with each agent's padding zeroed; discrete logits become the best available action (``--output
logits``), or an action index is passed through (``--output index``). Observations reach the actor
raw, as rmio.envs.to_pettingzoo gives them (zeros when lost), so an actor trained there fits as is.

The world model comes from an existing bundle (its ``wm_step*.onnx``, statistics and window) or a
training run directory (exported first, which needs torch). The result is re-validated with
``check_bundle`` before the command reports success. Needs the ``onnx`` package (``train`` extra).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import numpy as np

from rmio.errors import MissingExtraError, RmioError

if TYPE_CHECKING:  # the runtime (onnxruntime) loads only when the command runs, not for --help
    from rmio.runtime.bundle import Manifest

_PREFIX = "rmio_foreign__"


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise MissingExtraError(
            "rmio bundle", "train", "it edits ONNX graphs with `onnx`"
        ) from None
    return onnx


def _pick(names: list[str], given: str | None, default: str | None, what: str, flag: str) -> str:
    if given is not None:
        if given not in names:
            raise RmioError(f"the actor has no input or output '{given}' ({what}); it has {names}")
        return given
    if default in names:
        return default  # type: ignore[return-value]
    if len(names) == 1:
        return names[0]
    raise RmioError(f"cannot tell which of {names} is the {what}: name it with {flag}")


def _rename_uses(graph: Any, old: str, new: str) -> None:
    """Point every use of value ``old`` (in nodes, subgraphs and outputs) at ``new``."""
    for node in graph.node:
        for k, name in enumerate(node.input):
            if name == old:
                node.input[k] = new
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                _rename_uses(sub, old, new)


def wrap_actor(
    src: Path,
    manifest: Manifest,
    *,
    obs_input: str | None = None,
    agent_id_input: str | None = None,
    avail_input: str | None = None,
    action_output: str | None = None,
    output: str = "auto",
) -> Any:
    """The foreign actor graph wrapped to the bundle's actor contract (an ``onnx.ModelProto``)."""
    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    try:
        model = onnx.load(str(src))
    except Exception as exc:  # onnx raises DecodeError and others for a bad file
        raise RmioError(f"{src}: not a readable ONNX model ({str(exc).splitlines()[0]})") from None
    graph, spec = model.graph, manifest.spec
    d = spec.obs_dim
    inits = {i.name for i in graph.initializer}
    inputs = {i.name: i for i in graph.input if i.name not in inits}
    outputs = [o.name for o in graph.output]
    obs_name = _pick(list(inputs), obs_input, "obs", "observation input", "--obs-input")
    width = inputs[obs_name].type.tensor_type.shape.dim[-1]
    if width.HasField("dim_value") and width.dim_value != d:
        raise RmioError(
            f"{src}: the actor takes observations of width {width.dim_value}, the world model's "
            f"task {spec.name} has obs_dim {d} (rows padded to the widest agent)"
        )
    others = [k for k in inputs if k != obs_name]
    id_name = (
        _pick(others, agent_id_input, "agent_id", "agent id input", "--agent-id-input")
        if (agent_id_input or "agent_id" in others or (others and not spec.discrete))
        else None
    )
    rest = [k for k in others if k != id_name]
    avail_name = (
        _pick(rest, avail_input, "avail_actions", "available-actions input", "--avail-input")
        if spec.discrete and (avail_input or rest)
        else None
    )
    unused = [k for k in rest if k != avail_name]
    if unused:
        raise RmioError(
            f"{src}: actor inputs {unused} match nothing of the bundle's actor contract"
        )
    out_name = _pick(outputs, action_output, "action", "action output", "--action-output")
    if output == "auto":
        kind = graph.output[outputs.index(out_name)].type.tensor_type.elem_type
        output = "index" if kind in (TensorProto.INT64, TensorProto.INT32) else "logits"

    nodes: list[Any] = []
    for new, old in (("obs", obs_name), ("agent_id", id_name), ("avail_actions", avail_name)):
        if old is None:
            continue
        inner = _PREFIX + old
        _rename_uses(graph, old, inner)
        want = inputs[old].type.tensor_type.elem_type
        nodes.append(helper.make_node("Cast", [new], [inner], to=want))
    out_inner = _PREFIX + out_name
    for node in graph.node:
        for k, name in enumerate(node.output):
            if name == out_name:
                node.output[k] = out_inner
    _rename_uses(graph, out_name, out_inner)

    def const(name: str, value: np.ndarray) -> str:
        graph.initializer.append(numpy_helper.from_array(value, _PREFIX + name))
        return _PREFIX + name

    post: list[Any] = [helper.make_node("Cast", [out_inner], [_PREFIX + "out_f"], to=1)]
    if not spec.discrete:
        low = const("low", np.asarray(spec.action_low, np.float32))
        high = const("high", np.asarray(spec.action_high, np.float32))
        pad = const("pad", spec.action_feature_mask.astype(np.float32))
        post += [
            helper.make_node("Max", [_PREFIX + "out_f", low], [_PREFIX + "lo"]),
            helper.make_node("Min", [_PREFIX + "lo", high], [_PREFIX + "hi"]),
            helper.make_node("Gather", [pad, "agent_id"], [_PREFIX + "padrow"], axis=0),
            helper.make_node("Mul", [_PREFIX + "hi", _PREFIX + "padrow"], ["action"]),
        ]
        out_info = helper.make_tensor_value_info(
            "action", TensorProto.FLOAT, ["B", spec.action_dim]
        )
    elif output == "logits":
        floor = const("floor", np.asarray(-1e9, np.float32))
        post += [
            helper.make_node("Where", ["avail_actions", _PREFIX + "out_f", floor], [_PREFIX + "m"]),
            helper.make_node("ArgMax", [_PREFIX + "m"], ["action"], axis=1, keepdims=0),
        ]
        out_info = helper.make_tensor_value_info("action", TensorProto.INT64, ["B"])
    else:
        shape = const("flat", np.asarray([-1], np.int64))
        post = [
            helper.make_node("Cast", [out_inner], [_PREFIX + "out_i"], to=TensorProto.INT64),
            helper.make_node("Reshape", [_PREFIX + "out_i", shape], ["action"]),
        ]
        out_info = helper.make_tensor_value_info("action", TensorProto.INT64, ["B"])
    new_inputs = [
        helper.make_tensor_value_info("obs", TensorProto.FLOAT, ["B", d]),
        helper.make_tensor_value_info("agent_id", TensorProto.INT64, ["B"]),
    ]
    if spec.discrete:
        new_inputs.append(
            helper.make_tensor_value_info("avail_actions", TensorProto.BOOL, ["B", spec.action_dim])
        )
    body = [*nodes, *graph.node, *post]
    del graph.node[:]
    graph.node.extend(body)
    kept_inputs = [i for i in graph.input if i.name in inits]
    del graph.input[:]
    graph.input.extend([*new_inputs, *kept_inputs])
    del graph.output[:]
    graph.output.append(out_info)
    if not any(o.domain in ("", "ai.onnx") and o.version >= 13 for o in model.opset_import):
        raise RmioError(f"{src}: the actor uses ONNX opset < 13; re-export it with opset >= 13")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise RmioError(f"{src}: the wrapped actor is not a valid graph ({exc})") from None
    return model


def _world_model_source(path: Path) -> Path:
    if (path / "manifest.json").is_file():
        return path
    from rmio.evaluation.robustness import resolve_bundle

    return resolve_bundle(path)  # a run directory: exported (torch) into its bundle/


def build_bundle(
    actor: Path, world_model: Path, out: Path, *, force: bool = False, **wrap: Any
) -> str:
    """Write ``out``: the wrapped actor, the world model's graphs and a manifest; returns the
    bundle check's one-line verdict. A bundle that fails the check is removed again."""
    from rmio.runtime.bundle import Manifest, load_manifest
    from rmio.runtime.validate import check_bundle

    source = _world_model_source(world_model)
    manifest = load_manifest(source)
    if "wm_step" not in manifest.files:
        raise RmioError(f"'{world_model}' holds no world model (wm_step.onnx)")
    if out.exists():
        if not force:
            raise RmioError(f"'{out}' exists: pick another --out or pass --force")
        if out.resolve() in (source.resolve(), Path(world_model).resolve()):
            raise RmioError("--out must differ from the world model's bundle")
        shutil.rmtree(out)
    model = wrap_actor(actor, manifest, **wrap)
    out.mkdir(parents=True)
    try:
        _onnx().save(model, str(out / "actor.onnx"))
        files = {"actor": "actor.onnx"}
        for role in ("wm_step", "wm_step_pretrain"):
            if role in manifest.files:
                shutil.copyfile(source / manifest.files[role], out / manifest.files[role])
                files[role] = manifest.files[role]
        data = json.loads((source / "manifest.json").read_text())
        data["files"] = files
        data.pop("actor_state", None)  # the world model's bundle's own actor may be recurrent
        budget = {k: v for k, v in data.get("budget", {}).items() if not k.startswith("policy")}
        data["budget"] = {**budget, "policy_source": f"external ONNX actor {actor.name}"}
        # what was measured of the world model stays; what was measured of its old actor goes
        data["metrics"] = {
            k: v
            for k, v in data.get("metrics", {}).items()
            if not k.startswith(("actor", "policy"))
        }
        if "sha256" in data or "sha256" in Manifest.__dataclass_fields__:
            data["sha256"] = {
                name: hashlib.sha256((out / name).read_bytes()).hexdigest()
                for name in sorted(set(files.values()))
            }
        (out / "manifest.json").write_text(json.dumps(data, indent=2))
        return check_bundle(out)
    except Exception:
        shutil.rmtree(out, ignore_errors=True)
        raise


@click.command("bundle")
@click.option(
    "--actor",
    "actor",
    required=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="The foreign actor's ONNX file.",
)
@click.option(
    "--world-model",
    "world_model",
    required=True,
    type=click.Path(path_type=Path),
    help="A bundle (directory or shipped name) or a training run directory.",
)
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="The new bundle's directory."
)
@click.option(
    "--obs-input",
    default=None,
    help="The actor's observation input (default: obs, or its only input).",
)
@click.option("--agent-id-input", default=None, help="The actor's agent-id input, if it has one.")
@click.option(
    "--avail-input", default=None, help="Discrete: the actor's available-actions input, if any."
)
@click.option(
    "--action-output",
    default=None,
    help="The actor's action output (default: action, or its only output).",
)
@click.option(
    "--output",
    type=click.Choice(["auto", "logits", "index"]),
    default="auto",
    show_default=True,
    help="Discrete: what the actor outputs (auto: integers are indices, floats logits).",
)
@click.option("--force", is_flag=True, help="Replace --out if it exists.")
def bundle(actor: Path, world_model: Path, out: Path, force: bool, **wrap: Any) -> None:
    """Wrap an actor trained elsewhere (ONNX) and an rmio world model into a checked bundle."""
    from rmio.console import console
    from rmio.models import find_bundle

    if not world_model.is_dir():
        world_model = find_bundle(world_model)
    console.print(build_bundle(actor, world_model, out, force=force, **wrap))


def register(cli: click.Group) -> None:
    """Attach `rmio bundle` to the main group."""
    cli.add_command(bundle)
