"""The surgery path, patch-text CAMs, prompts and batched CAMs on random-init models (fast, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from PIL import Image

from pipeline.cam.images import presence_scores, surgery_cams, to_clip_input
from pipeline.cam.surgery import resize_pos_embed, surgery_forward
from pipeline.cam.text import class_prompts, encode_class_prompts, encode_prompts
from pipeline.cam.text_cam import cams_to_image, feature_surgery, labels_from_cams, text_cams
from pipeline.models import load_clip

TINY_CLIP = "diclip-tiny-vit-p8-64"
NAMES = ("disk", "bar", "ring")


@pytest.fixture(scope="module")
def tiny_clip():
    torch.manual_seed(0)
    return load_clip(TINY_CLIP, None, device="cpu")


@pytest.fixture(scope="module")
def tiny_visual(tiny_clip):
    return tiny_clip.model.visual


@pytest.fixture(scope="module")
def uint8_images():
    return np.random.default_rng(0).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)


def toy_visual(layers: int = 2) -> VisionTransformer:
    """A 2-block ViT: 32 px, patch 8 (4x4 grid), width 32, 2 heads, joint dim 16."""
    torch.manual_seed(1)
    return VisionTransformer(image_size=32, patch_size=8, width=32, layers=layers, heads=2, mlp_ratio=2.0,
                             output_dim=16).eval()


def reference_tokens(visual, images):
    """open_clip's own forward, every token through ln_post and proj."""
    return visual.ln_post(visual.transformer(visual._embeds(images))) @ visual.proj


@torch.no_grad()
def test_shapes_at_64px(tiny_visual):
    images = torch.randn(3, 3, 64, 64)
    out = surgery_forward(tiny_visual, images, surgery_blocks=2, return_attention=True)
    assert out.grid == (8, 8)
    assert out.tokens.shape == (3, 65, 128) and out.patch_tokens.shape == (3, 64, 128)
    assert out.image_embedding.shape == (3, 128)
    assert len(out.attention) == 6 and out.attention[0].shape == (3, 65, 65)
    assert len(out.surgery_attention) == 2
    text = torch.randn(7, 128)
    cams = text_cams(out.tokens, text, image_embedding=out.image_embedding)
    assert cams.shape == (3, 7, 64)
    assert cams_to_image(cams, out.grid, (64, 64)).shape == (3, 7, 64, 64)


@torch.no_grad()
@pytest.mark.parametrize("head_reduce", ["none", "mean", "sum"])
def test_shapes_for_a_two_block_toy_at_another_size(head_reduce):
    visual = toy_visual()
    out = surgery_forward(visual, torch.randn(2, 3, 48, 40), surgery_blocks=2, head_reduce=head_reduce,
                          return_attention=True)
    assert out.grid == (6, 5)
    assert out.tokens.shape == (2, 31, 16) and out.image_embedding.shape == (2, 16)
    rows = out.surgery_attention[0].sum(-1)  # head-reduced attention, averaged over what remains
    assert torch.allclose(rows, torch.full_like(rows, 2.0 if head_reduce == "sum" else 1.0), atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("which", ["tiny", "toy"])
def test_zero_surgery_blocks_gives_the_original_tokens(which, tiny_visual):
    visual = tiny_visual if which == "tiny" else toy_visual()
    size = visual.image_size[0]
    images = torch.randn(2, 3, size, size)
    out = surgery_forward(visual, images, surgery_blocks=0)
    torch.testing.assert_close(out.tokens, reference_tokens(visual, images), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.image_embedding, visual(images), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_surgery_keeps_the_original_image_embedding_and_changes_patches(tiny_visual):
    images = torch.randn(2, 3, 64, 64)
    plain = surgery_forward(tiny_visual, images, surgery_blocks=0)
    surg = surgery_forward(tiny_visual, images, surgery_blocks=3)
    torch.testing.assert_close(surg.image_embedding, plain.image_embedding)
    assert not torch.allclose(surg.patch_tokens, plain.patch_tokens)


@torch.no_grad()
def test_zero_attention_bias_changes_nothing_and_a_bias_does(tiny_visual):
    images = torch.randn(2, 3, 64, 64)
    base = surgery_forward(tiny_visual, images, surgery_blocks=2)
    zero = surgery_forward(tiny_visual, images, surgery_blocks=2, attn_bias=torch.zeros(2, 64, 64))
    torch.testing.assert_close(zero.tokens, base.tokens)
    biased = surgery_forward(tiny_visual, images, surgery_blocks=2, attn_bias=torch.eye(64).expand(2, 64, 64))
    assert not torch.allclose(biased.patch_tokens, base.patch_tokens)
    with pytest.raises(ValueError, match="attn_bias"):
        surgery_forward(tiny_visual, images, surgery_blocks=2, attn_bias=torch.zeros(2, 65, 65))


def test_position_embedding_resize():
    pos = torch.randn(1 + 16, 8)
    assert resize_pos_embed(pos, (4, 4)) is pos
    big = resize_pos_embed(pos, (20, 20))
    assert big.shape == (401, 8)
    torch.testing.assert_close(big[0], pos[0])
    constant = torch.ones(17, 8)
    torch.testing.assert_close(resize_pos_embed(constant, (7, 5)), torch.ones(36, 8))


def test_bad_arguments_are_refused(tiny_visual):
    with pytest.raises(ValueError, match="surgery_blocks"):
        surgery_forward(tiny_visual, torch.randn(1, 3, 64, 64), surgery_blocks=7)
    with pytest.raises(ValueError, match="head_reduce"):
        surgery_forward(tiny_visual, torch.randn(1, 3, 64, 64), surgery_blocks=1, head_reduce="max")
    with pytest.raises(ValueError, match="self_similarity"):
        surgery_forward(tiny_visual, torch.randn(1, 3, 64, 64), surgery_blocks=1, self_similarity="qx")


@torch.no_grad()
def test_self_similarity_choice_changes_the_surgery_attention(tiny_visual):
    images = torch.randn(2, 3, 64, 64)
    qkv = surgery_forward(tiny_visual, images, surgery_blocks=1, return_attention=True)
    v_only = surgery_forward(tiny_visual, images, surgery_blocks=1, self_similarity="v", return_attention=True)
    assert not torch.allclose(qkv.surgery_attention[0], v_only.surgery_attention[0])
    # v-v attention is symmetric before the row softmax: its logits are v v^T
    torch.testing.assert_close(qkv.image_embedding, v_only.image_embedding)


@torch.no_grad()
@pytest.mark.parametrize("options", [dict(), dict(cls_weighting=False), dict(surgery=False),
                                     dict(minmax_with_cls=True), dict(token_norm="token")])
def test_cams_are_min_max_normalised(tiny_visual, options):
    out = surgery_forward(tiny_visual, torch.randn(4, 3, 64, 64), surgery_blocks=2)
    cams = text_cams(out.tokens, torch.randn(7, 128), image_embedding=out.image_embedding, **options)
    assert cams.min() >= 0 and cams.max() <= 1
    if not options.get("minmax_with_cls"):
        torch.testing.assert_close(cams.amin(-1), torch.zeros(4, 7))
        torch.testing.assert_close(cams.amax(-1), torch.ones(4, 7), atol=1e-5, rtol=0)
    image = cams_to_image(cams, out.grid, (64, 64))
    assert image.min() >= 0 and image.max() <= 1


def test_planted_patches_light_up_with_feature_surgery():
    """Patch p_c carries exactly text c's direction, every other patch is orthogonal to all texts."""
    classes, dim, patches = 4, 16, 9
    torch.manual_seed(0)
    tokens = torch.zeros(2, 1 + patches, dim)
    tokens[:, :, classes:] = torch.randn(2, 1 + patches, dim - classes)  # orthogonal to the texts
    planted = [0, 4, 5, 8]
    for c, p in enumerate(planted):
        tokens[:, 1 + p] = 0
        tokens[:, 1 + p, c] = 1.0
    text = torch.eye(classes, dim)
    cams = text_cams(tokens, text, cls_weighting=False)  # (2, C, N)
    for c, p in enumerate(planted):
        assert cams[:, c].argmax(-1).tolist() == [p, p]
        torch.testing.assert_close(cams[:, c, p], torch.ones(2), atol=1e-6, rtol=0)
        others = [n for n in range(patches) if n != p]
        assert torch.all(cams[:, c, others] < 0.9)


@torch.no_grad()
def test_planted_text_equal_to_a_patch_feature_highlights_that_patch(tiny_visual):
    images = torch.randn(1, 3, 64, 64)
    out = surgery_forward(tiny_visual, images, surgery_blocks=2)
    planted = {0: (1, 2), 1: (6, 5), 2: (3, 7)}  # class -> (row, col) on the 8x8 grid
    text = torch.stack([out.patch_tokens[0, r * 8 + c] for r, c in planted.values()])
    cams = text_cams(out.tokens, text, surgery=False)
    image = cams_to_image(cams, out.grid, (64, 64))
    for k, (r, c) in enumerate(planted.values()):
        assert cams[0, k].argmax().item() == r * 8 + c and cams[0, k, r * 8 + c] == pytest.approx(1.0, abs=1e-6)
        peak = divmod(image[0, k].argmax().item(), 64)  # pixel of the highest upsampled value
        assert r * 8 - 4 <= peak[0] < r * 8 + 12 and c * 8 - 4 <= peak[1] < c * 8 + 12


def test_feature_surgery_subtracts_the_weighted_mean():
    sim = torch.tensor([[[0.9, 0.5, 0.1]]])
    torch.testing.assert_close(feature_surgery(sim), sim - 0.5)
    weights = torch.tensor([[2.0, 1.0, 0.0]])
    weighted = torch.tensor([[[1.8, 0.5, 0.0]]])
    torch.testing.assert_close(feature_surgery(sim, weights=weights), weighted - weighted.mean(-1, keepdim=True))


def test_labels_from_cams_use_present_classes_and_the_threshold():
    cams = torch.zeros(1, 3, 2, 2)
    cams[0, 0] = torch.tensor([[0.9, 0.2], [0.5, 0.1]])
    cams[0, 1] = torch.tensor([[0.1, 0.8], [0.6, 0.3]])
    cams[0, 2] = torch.tensor([[1.0, 1.0], [1.0, 1.0]])  # absent class: never chosen
    present = torch.tensor([[True, True, False]])
    labels = labels_from_cams(cams, present, bg_threshold=0.4)
    assert labels.tolist() == [[[1, 2], [2, 0]]]
    assert labels_from_cams(cams, torch.zeros(1, 3, dtype=torch.bool), bg_threshold=0.0).eq(0).all()


# --- prompts, model input and the batched recipe ---------------------------------------------------


def test_class_prompts_format_every_name():
    assert class_prompts(NAMES) == ["a photo of a disk.", "a photo of a bar.", "a photo of a ring."]
    assert class_prompts(NAMES[:1], "{} here") == ["disk here"]


def test_model_input_is_exactly_the_loaders_preprocessing_at_the_input_size(tiny_clip, uint8_images):
    x = to_clip_input(uint8_images, tiny_clip.model.visual)
    ref = torch.stack([tiny_clip.preprocess(Image.fromarray(im)) for im in uint8_images])
    assert x.dtype == torch.float32 and torch.equal(x, ref)


@torch.no_grad()
def test_prompt_ensembles_average_normalised_embeddings(tiny_clip):
    model, tok = tiny_clip.model, tiny_clip.tokenizer
    single = encode_class_prompts(model, tok, NAMES)
    torch.testing.assert_close(single, encode_prompts(model, tok, class_prompts(NAMES)), atol=1e-6, rtol=0)
    templates = ("a photo of a {}.", "a {} here.")
    two = encode_class_prompts(model, tok, NAMES, templates)
    bar = F.normalize(model.encode_text(tok([t.format("bar") for t in templates])).float(), dim=-1)  # (2, E)
    torch.testing.assert_close(two[1], F.normalize(bar.mean(0), dim=-1))
    assert two.shape == (3, 128) and torch.allclose(two.norm(dim=-1), torch.ones(3))
    assert not torch.allclose(two, single)


@torch.no_grad()
def test_presence_scores_are_image_text_cosines(tiny_clip, uint8_images):
    model = tiny_clip.model
    text = encode_prompts(model, tiny_clip.tokenizer, class_prompts(NAMES))
    scores = presence_scores(model, uint8_images, text, batch_size=2)
    image = F.normalize(model.encode_image(to_clip_input(uint8_images, model.visual)), dim=-1)
    assert scores.shape == (5, 3)
    np.testing.assert_allclose(scores, (image @ text.T).numpy(), atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("cls_weighting", [True, False])
def test_batched_surgery_cams_are_the_per_image_recipe(tiny_clip, uint8_images, cls_weighting):
    model = tiny_clip.model
    text = encode_prompts(model, tiny_clip.tokenizer, class_prompts(NAMES))
    recipe = dict(surgery_blocks=2, cls_weighting=cls_weighting, head_reduce="mean", self_similarity="v",
                  cls_temperature=3.0, token_norm="token")
    cams = surgery_cams(model, uint8_images, text, **recipe, batch_size=2)  # batches of 2, 2, 1
    assert cams.shape == (5, 3, 64, 64) and cams.min() >= 0 and cams.max() <= 1
    out = surgery_forward(model.visual, to_clip_input(uint8_images, model.visual), surgery_blocks=2,
                          head_reduce="mean", self_similarity="v")
    want = cams_to_image(text_cams(out.tokens, text, image_embedding=out.image_embedding, cls_weighting=cls_weighting,
                                   temperature=3.0, token_norm="token"), out.grid, (64, 64))
    torch.testing.assert_close(cams, want, atol=1e-5, rtol=1e-5)
    other = surgery_cams(model, uint8_images, text, **{**recipe, "surgery_blocks": 0})
    assert not torch.allclose(cams, other, atol=1e-3)
