"""The store layer's user-facing error, importable without zarr, h5py or numpy (a fast error path)."""

from pipeline.errors import UserError


class StoreError(UserError, RuntimeError):
    """An artifact is missing, incomplete, or was written with other inputs; the message names the path."""
