"""The TSA cache (method.md Stage B): class images drawn by Stable Diffusion, their masks, prototype
keys with one-hot values, and retrieval of a cache CAM from CLIP's patch features."""
