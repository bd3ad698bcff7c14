"""Trained model bundles shipped with rmio (see each folder's MODEL_CARD.md)."""
