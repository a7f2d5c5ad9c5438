"""Run PlantedTask over N images into a store on a 2-worker LocalCluster (killed part-way by a test
through the runner's DICLIP_KILL_AFTER_IMAGES hook)."""

import sys

from pipeline.params import RunnerParams
from pipeline.runner import run_per_image
from pipeline.store.image_store import ImageStore
from tests.runner_tasks import SPECS, PlantedTask

if __name__ == "__main__":
    store_path, n, shard, log_dir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    ids = [f"img_{i:04d}" for i in range(n)]
    store = ImageStore.create_or_resume(store_path, ids=ids, specs=SPECS, key="p", attrs={"stage": "t"}, shard_images=shard)
    run_per_image(PlantedTask(log_dir=log_dir), store, RunnerParams(n_workers=2))
    store.mark_complete()
