"""Trained model bundles shipped with rmio (see each folder's MODEL_CARD.md), and how to find
them."""

from __future__ import annotations

from pathlib import Path

from rmio.errors import RmioError

DEFAULT_BUNDLE = "halfcheetah_6x1"
HERE = Path(__file__).resolve().parent


def default_bundle() -> Path:
    """The bundle shipped in the package (``models/halfcheetah_6x1`` of the repository)."""
    path = HERE / DEFAULT_BUNDLE
    if not (path / "manifest.json").is_file():
        raise RmioError(
            f"the default bundle is missing from {path}; pass a bundle directory to `rmio demo`"
        )
    return path


def shipped_bundles() -> list[str]:
    """Names of the bundles shipped in the package (each a folder with a manifest.json)."""
    return sorted(p.name for p in HERE.iterdir() if (p / "manifest.json").is_file())


def find_bundle(name_or_path: str | Path) -> Path:
    """A directory as given when it exists; otherwise a shipped bundle named ``NAME`` or
    ``models/NAME``, so shipped bundles work from any directory and from an installed wheel. Raises
    RmioError naming both."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    name = (
        path.name if path.parts[:1] == ("models",) and len(path.parts) == 2 else str(name_or_path)
    )
    if name in shipped_bundles():
        return HERE / name
    raise RmioError(
        f"no bundle '{name_or_path}': not a directory here, and not a shipped bundle "
        f"(shipped: {', '.join(shipped_bundles())}; `rmio models` lists them)"
    )


def resolve_model_path(path: str | Path) -> Path:
    """``path`` as given if it exists, else ``models/NAME`` looked up among the bundles shipped in
    the package."""
    path = Path(path)
    if not path.exists() and path.parts[:1] == ("models",):
        shipped = HERE.joinpath(*path.parts[1:])
        if shipped.exists():
            return shipped
    return path
