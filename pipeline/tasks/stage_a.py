"""Stage A on a worker: each image's clusters, R and P (`MapsTask`), and the metric's scores (`ScoreTask`)."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.diffusion.plan import Plan


@dataclass(frozen=True)
class MapsTask:
    """Runner task: per worker, load SD and open the splits once; then an image's stored arrays by id."""

    plan: Plan
    model: str
    device: str
    precision: str
    index: str
    splits: tuple[str, ...]
    batch_images: int = 1  # images per VAE encode and UNet forward (groups fixed by position in the store)

    def specs(self) -> list:
        """The arrays one image gives (layout: pipeline/store/diffusion_maps.py)."""
        from pipeline.store.image_store import ArraySpec

        g, p = self.plan.grid, self.plan
        specs = [ArraySpec("clusters", (g, g), "uint8"), ArraySpec("k", (), "int32"),
                 ArraySpec("rows", (p.max_clusters, g * g), "float32")]
        if p.transition_k:
            t2 = p.transition_grid ** 2
            specs += [ArraySpec("transition_values", (t2, p.transition_k), p.config.transition.store_dtype),
                      ArraySpec("transition_index", (t2, p.transition_k), "int16"),
                      ArraySpec("transition_kept", (), "float32"), ArraySpec("transition_truncated", (), "float32")]
        return specs

    def attrs(self, weights: str) -> dict:
        """What the store records of how it was made (besides provenance): the resolved plan and model."""
        c = self.plan.config
        forward = {k: getattr(c, k) for k in ("image_size", "timestep", "resize", "add_noise", "noise_seed", "prompt")}
        return {"recipe": c.recipe, "model": self.model, "precision": self.precision, "weights": weights, **forward,
                "latent_size": self.plan.latent_size, "grid": c.grid, "max_clusters": self.plan.max_clusters,
                "correlation": ({"layer": c.diclip.layer, "heads": list(c.diclip.heads), "kl_precision": c.diclip.kl_precision}
                                if c.recipe == "diclip" else None),
                "transition": ({"layer": c.transition.layer, "heads": list(c.transition.heads), "sharpen": c.transition.sharpen,
                                "store_dtype": c.transition.store_dtype,
                                "grid": self.plan.transition_grid, "k": self.plan.transition_k}
                               if self.plan.transition_k else None)}

    def build(self):
        from pipeline.models import load_stable_diffusion
        from pipeline.store.dataset_index import DatasetIndex

        from pipeline.tasks.groups import ImageGroups

        index = DatasetIndex.load(self.index)
        images = index.images(self.splits)
        fn = self.plan.maps(load_stable_diffusion(self.model, device=self.device, precision=self.precision))
        groups = ImageGroups(index.ids_of(self.splits), self.batch_images)
        return groups.serve(lambda group: fn.batch([images.load_image(i) for i in group], group))

    def input_digest(self, image_id: str) -> bytes:
        from pipeline.store.dataset_index import image_digests

        return image_digests(self.index, self.splits)[image_id]


@dataclass(frozen=True)
class ScoreTask:
    """Runner item task: score a chunk of eval images by id against their masks (pipeline.diffusion.evaluate):
    the stored clusters, and per worker the other recipe and an untrained UNet built once, and colour k-means."""

    plan: Plan
    model: str
    device: str
    precision: str
    index: str
    split: str
    store: str  # the finished diffusion.zarr
    others: tuple[str, ...]  # "acr" / "diclip" (the other recipe), "untrained_unet"
    colour: bool

    def build(self):
        from pipeline.diffusion.evaluate import image_scores
        from pipeline.store.dataset_index import DatasetIndex
        from pipeline.store.diffusion_maps import DiffusionMaps

        maps = DiffusionMaps.open(self.store)
        images = DatasetIndex.load(self.index).images([self.split])
        others = {}
        if self.others:
            from pipeline.models import load_stable_diffusion, untrained_unet

            pipe = load_stable_diffusion(self.model, device=self.device, precision=self.precision)
            for name in self.others:
                others[name] = (self.plan.maps(pipe, unet=untrained_unet(pipe.unet), transition=False)
                                if name == "untrained_unet" else self.plan.maps(pipe, recipe=name, transition=False))

        def score(ids: tuple[str, ...]) -> list[dict]:
            return [image_scores(i, recipe=self.plan.recipe, clusters=maps.clusters, mask=images.load_mask,
                                 image=images.load_image, others=others, colour_baseline=self.colour,
                                 transition=maps.transition if self.plan.transition_k else None) for i in ids]

        return score
