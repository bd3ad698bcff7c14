"""`rmio swarm keys`, `rmio swarm compose` and `rmio swarm doctor`: what a deployment across
machines is given besides the roster (its keys, and a compose file with one service per role),
and what a machine can run before it joins one."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("keys")
@click.argument("roster", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--key",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Key file to write [ROSTER with the suffix .key]; its path is stored relative to the "
    "roster.",
)
@click.option(
    "--curve",
    is_flag=True,
    help="Also a CURVE keypair per role in ROSTER.curve/ (and 'curve: true'); a roster that "
    "already says 'curve: true' gets fresh ones anyway.",
)
def swarm_keys(roster: Path, key: Path | None, curve: bool) -> None:
    """Create a fresh swarm key for a roster (and clear its 'insecure' flag): copy the key file with
    the roster to every machine, readable by its owner only. CURVE keys: copy public/ everywhere,
    and each secret/NAME.key_secret only to the machine that runs NAME."""
    from rmio.runtime.launcher import roster_keys
    from rmio.runtime.settings import Roster

    click.echo(f"key: {roster_keys(roster, key, curve=curve)}")
    settings = Roster.load(roster).settings
    if settings.curve:
        click.echo(f"curve keys: {settings.curve_dir}")


@click.command("compose")
@click.argument("roster", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Compose file to write [docker-compose.yml beside the roster].",
)
@click.option("--image", default="rmio-runtime", show_default=True, help="Agents and wm node.")
@click.option("--env-image", default="rmio-full", show_default=True, help="The env host.")
def swarm_compose(roster: Path, out: Path | None, image: str, env_image: str) -> None:
    """Write a Docker Compose file for a roster: one service per role, host networking, the
    roster's folder mounted read-only (each service gets only its own CURVE secret key)."""
    from rmio.deploy import write_compose

    out = out if out is not None else roster.parent / "docker-compose.yml"
    click.echo(f"compose file: {write_compose(roster, out, image=image, env_image=env_image)}")


@click.command("doctor")
@click.option(
    "--roster",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Also check this roster's swarm key and which roles' CURVE keys this machine holds.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
def swarm_doctor(roster: Path | None, as_json: bool) -> None:
    """What this machine can run: onnxruntime's execution providers (CUDA for the world-model
    node?), the extras installed, and a roster's keys."""
    import json

    from rmio.deploy import inventory

    found = inventory(roster)
    if as_json:
        click.echo(json.dumps(found))
        return
    click.echo(f"onnxruntime {found['onnxruntime']}: {', '.join(found['providers'])}")
    if found["onnxruntime_pair"]:
        click.echo(
            "  onnxruntime and onnxruntime-gpu are both installed: keep one (docs/DEPLOY.md)"
        )
    for extra, modules in found["extras"].items():
        have = ", ".join(f"{m} {v}" if v else f"{m} missing" for m, v in modules.items())
        click.echo(f"{extra}: {have}")
    keys = found.get("roster")
    if keys is not None:
        key = keys["key_file"]
        click.echo(
            "swarm key: "
            + ("none (insecure)" if key is None else "ok" if key["ok"] else key["error"])
        )
        if keys["curve"] is not None:
            click.echo(f"CURVE public keys: {', '.join(keys['curve']['public']) or 'none'}")
            click.echo(f"CURVE secret keys here: {', '.join(keys['curve']['secret']) or 'none'}")


def register(swarm: click.Group) -> None:
    """Attach the deployment commands to `rmio swarm`."""
    swarm.add_command(swarm_keys)
    swarm.add_command(swarm_compose)
    swarm.add_command(swarm_doctor)
