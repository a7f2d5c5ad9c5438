"""The version of every stored format whose bytes are decided by plumbing code (the stores, the JSON
writer) rather than by a stage's own algorithm code.

A stage's key names its algorithm code by content (pipeline.codegraph) but leaves the stores out, so a
refactor of a store never recomputes an image. A change to a store that does change stored bytes must
bump its version here: every stage writing that format then reruns (`dvc.yaml` reads these constants as
params of the stages that write each format, and every stamp holds the versions of what its stage writes).
Plain integer assignments only: DVC parses this file.
"""

IMAGE_STORE = 3  # per-image zarr stores and their PNG files (pipeline/store/image_store.py); 3: crc32c per chunk
DATASET_INDEX = 1  # artifacts/index/ (pipeline/store/dataset_index.py)
H5_RECORDS = 2  # keyed HDF5 records (pipeline/store/h5_store.py); 2: Fletcher-32 per chunk
CHECKPOINTS = 1  # training checkpoints (pipeline/store/checkpoints.py)
SEGMENTER = 1  # a saved segmenter folder (pipeline/store/segmenter.py)
LIVE = 1  # training curves through DVCLive (pipeline/store/live.py)
JSON = 1  # metric and detail files (pipeline/atomic.py write_json: sorted keys, indent 1)
