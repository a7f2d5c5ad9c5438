"""Artifact layouts: the only code that reads and writes zarr and HDF5 files."""
