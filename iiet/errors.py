"""``IIETError``: bad input that the user can fix (defined beside the model code, which checkpoints carry along)."""

from iiet.models.errors import IIETError

__all__ = ["IIETError"]
