"""What the runner runs for each stage: picklable tasks that build their models once per worker
(`build()`) and read their inputs from the stores, calling the algorithm packages.

The glue between `pipeline/store` (files) and the algorithm packages (tensors): algorithms never read
a store, stages never hold a model. A task's source is part of its stage's key (it decides bytes:
batch groups, which inputs an image sees), so tasks hold no plumbing.
"""
