"""Stage A's plan: its config resolved against a Stable Diffusion's own configs, before any weights load.

`image_size` and `timestep` may be left to the model (null), layer paths may be spelled DiCLIP's way,
and a head may not exist: `plan` settles all of it from the UNet, VAE and scheduler configs, so a
wrong layer or size is refused in a second, naming the params key, and every worker computes from the
same resolved values. Stage A, the TSA cache's masks, the benches and the selection script share it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pipeline.diffusion.config import StageAConfig
from pipeline.errors import ParamsError


@dataclass(frozen=True)
class Plan:
    """A resolved StageAConfig (sizes, timestep and layer paths settled) and the store widths it implies."""

    config: StageAConfig
    latent_size: int
    transition_grid: int  # the token grid t of P's layer
    transition_k: int  # stored entries per row of P (0: no P)
    max_clusters: int  # length of the stored cluster-row axis

    @property
    def grid(self) -> int:
        return self.config.grid

    @property
    def recipe(self) -> str:
        return self.config.recipe

    def maps(self, pipe, *, recipe: str | None = None, unet=None, transition: bool = True):
        """The per-image function (pipeline.diffusion.recipes.StageAMaps) of this plan; `recipe`, `unet`
        and `transition=False` give the metric's comparisons (the other recipe, an untrained UNet)."""
        from pipeline.diffusion.recipes import StageAMaps

        config = self.config if recipe is None else replace(self.config, recipe=recipe)
        return StageAMaps(pipe, config, latent_size=self.latent_size, transition=transition and self.transition_k > 0,
                          unet=unet)


def plan(config: StageAConfig, model: str) -> Plan:
    """Resolve `config` (the diffusion_attention params) against `model` (a diffusers folder or hub id);
    ParamsError naming the key when a size, layer or head does not fit the model."""
    from pipeline.diffusion.sd_input import vae_factor_from_config
    from pipeline.diffusion.recipes import max_clusters
    from pipeline.diffusion.selected import LayerTap, UnknownLayerError, check_taps
    from pipeline.models.sd_config import inference_timestep, read_component_config, self_attention_layers_of

    unet_config = read_component_config(model, "unet")
    factor = vae_factor_from_config(read_component_config(model, "vae"))
    image_size = config.image_size or int(unet_config["sample_size"]) * factor
    if image_size % factor:
        raise ParamsError(f"diffusion_attention.image_size {image_size} is not a multiple of the VAE factor {factor} of {model}")
    latent = image_size // factor
    timestep = config.timestep
    if timestep is None:
        timestep = inference_timestep(read_component_config(model, "scheduler", "scheduler_config.json"),
                                      config.schedule_steps, config.schedule_index)
    layers = self_attention_layers_of(unet_config)
    heads = {path: layer.heads for path, layer in layers.items()}
    try:
        [corr] = check_taps(heads, [LayerTap(config.diclip.layer, config.diclip.heads)], what="diffusion_attention.diclip.layer")
        [trans] = check_taps(heads, [LayerTap(config.transition.layer, config.transition.heads)],
                             what="diffusion_attention.transition.layer")
    except UnknownLayerError as err:
        raise ParamsError(f"{err} (model {model})") from None
    t = layers[trans.path].grid(latent)
    resolved = replace(config, image_size=image_size, timestep=int(timestep),
                       diclip=replace(config.diclip, layer=corr.path, heads=corr.heads),
                       transition=replace(config.transition, layer=trans.path, heads=trans.heads))
    return Plan(resolved, latent, t, min(config.transition.topk, t * t), max_clusters(resolved))
