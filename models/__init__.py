"""Trained model bundles shipped with rmio (see each folder's MODEL_CARD.md), and how to find them."""

from __future__ import annotations

from pathlib import Path

from rmio.errors import RmioError

DEFAULT_BUNDLE = "halfcheetah_6x1"
HERE = Path(__file__).resolve().parent


def default_bundle() -> Path:
    """The bundle shipped in the package (``models/halfcheetah_6x1`` of the repository)."""
    path = HERE / DEFAULT_BUNDLE
    if not (path / "manifest.json").is_file():
        raise RmioError(f"the default bundle is missing from {path}; pass a bundle directory to `rmio demo`")
    return path


def resolve_model_path(path: str | Path) -> Path:
    """``path`` as given if it exists, else ``models/NAME`` looked up among the bundles shipped in the package."""
    path = Path(path)
    if not path.exists() and path.parts[:1] == ("models",):
        shipped = HERE.joinpath(*path.parts[1:])
        if shipped.exists():
            return shipped
    return path
