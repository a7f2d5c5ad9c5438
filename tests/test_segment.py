"""Stage D's segmenter pieces: the losses on hand-computed examples, ignore handling, the decoder's
shapes and affinity, and the block tokens it reads from a frozen CLIP."""

from __future__ import annotations

import math

import pytest
import torch


def labels_2x2(top_left=0, top_right=1, bottom_left=1, bottom_right=255) -> torch.Tensor:
    """(1, 4, 4) labels whose 2 x 2 patches hold the given values."""
    small = torch.tensor([[top_left, top_right], [bottom_left, bottom_right]])
    return small.repeat_interleave(2, 0).repeat_interleave(2, 1)[None]


def affinity_part(p, labels, radius=8):
    """The affinity term of the segmenter's loss: 0.5 mean(1 - p) over same-label pairs + 0.5 mean(p) over
    different-label pairs (its sums and counts, as losses.loss_sums gives them)."""
    from pipeline.segment.losses import loss_sums

    sums, counts = loss_sums(torch.zeros(1, 3, 2, 2), p, labels, 2, radius)
    return float(0.5 * (sums[2] / counts[2].clamp(min=1) + sums[3] / counts[3].clamp(min=1)))


def test_affinity_loss_by_hand():
    from pipeline.segment.losses import affinity_targets

    labels = labels_2x2()  # patches 0: bg, 1 and 2: class 1, 3: ignored
    same, different = affinity_targets(labels, grid=2, radius=8)
    assert int(same.sum()) == 5 and int(different.sum()) == 4  # {00, 11, 22, 12, 21} and {01, 10, 02, 20}
    assert not same[0, 3].any() and not different[0, :, 3].any()  # the ignored patch pairs with nothing
    p = torch.full((1, 4, 4), 0.25)
    assert affinity_part(p, labels) == pytest.approx(0.5 * 0.75 + 0.5 * 0.25)
    perfect = same.float()
    assert affinity_part(perfect, labels) == pytest.approx(0.0)
    # radius 0: only a patch with itself, all same-label pairs
    assert affinity_part(p, labels, radius=0) == pytest.approx(0.5 * 0.75)


def test_segmenter_loss_by_hand_and_ignore():
    from pipeline.segment.losses import segmenter_loss

    labels = torch.tensor([[[0, 2], [2, 255]]])  # labels at the logits' size: no upsampling spreads a logit
    logits = torch.zeros(1, 3, 2, 2)  # uniform over background + 2 classes: CE = log 3 everywhere
    p = torch.full((1, 4, 4), 0.25)
    loss = segmenter_loss(logits, p, labels, grid=2, affinity_weight=0.1, radius=8)
    assert float(loss) == pytest.approx(math.log(3) + 0.1 * 0.5, abs=1e-6)
    logits[0, 0, 1, 1] = 100.0  # a confident mistake on the ignored patch changes nothing
    assert float(segmenter_loss(logits, p, labels, grid=2, affinity_weight=0.1, radius=8)) == pytest.approx(float(loss), abs=1e-6)


def test_the_decoder_on_the_tiny_clips_block_tokens():
    from pipeline.cam.images import to_clip_input
    from pipeline.cam.surgery import surgery_forward
    from pipeline.models.clip import load_shipped_clip
    from pipeline.segment.decoder import build_decoder, clip_block_tokens, feature_affinity

    clip = load_shipped_clip()
    visual = clip.model.visual
    images = torch.randint(0, 256, (2, 64, 64, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    x = to_clip_input(images.numpy(), visual)
    with torch.no_grad():
        tokens, grid = clip_block_tokens(visual, x)
        plain = surgery_forward(visual, x, surgery_blocks=0).tokens[:, 1:]
    assert tokens.shape == (2, 6, 64, 128) and grid == 8
    bigger, g16 = clip_block_tokens(visual, torch.nn.functional.interpolate(x, size=128))  # any multiple of the patch
    assert bigger.shape == (2, 6, 256, 128) and g16 == 16
    torch.testing.assert_close(visual.ln_post(tokens[:, -1]) @ visual.proj, plain, atol=1e-5, rtol=1e-5)
    decoder = build_decoder("diclip", 128, 6, 7, dim=32, layers=1, heads=4, dropout=0.1).eval()
    logits, features = decoder(tokens, 8)
    assert logits.shape == (2, 8, 8, 8) and features.shape == (2, 64, 32)
    a = feature_affinity(features)
    assert a.shape == (2, 64, 64) and (a > 0).all() and (a < 1).all()
    torch.testing.assert_close(a, a.transpose(1, 2))
    with pytest.raises(ValueError, match="architecture must be one of diclip"):
        build_decoder("segformer", 128, 6, 7, dim=32, layers=1, heads=4, dropout=0.1)


def test_multiscale_inference_averages_scales_and_flips_back():
    from pipeline.segment.inference import multiscale_logits

    x = torch.zeros(1, 3, 32, 48)
    x[..., :24] = 1.0  # bright left half
    sizes = []

    def logits_of(inp):  # "class 0" where the input is bright, at 1/8 of the input size
        sizes.append(inp.shape[-1])
        bright = torch.nn.functional.avg_pool2d(inp[:, :1], 8)
        return torch.cat([bright, 1 - bright], dim=1)

    logits = multiscale_logits(logits_of, x, (32, 48), base=64, patch=8, scales=(0.7, 1.0, 1.2, 1.5), flip=True,
                               fraction=0.4)
    assert logits.shape == (1, 2, 32, 48)
    assert sorted(sizes) == [48, 48, 64, 80, 80, 96, 96]  # 0.7, 1.2, 1.5 with their mirrors; 1.0 alone
    # a mirror whose logits were not flipped back would average the halves to 0.5
    assert (logits[0, 0, :, :16] > 0.9).all() and (logits[0, 0, :, 32:] < 0.1).all()
