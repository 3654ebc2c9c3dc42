"""Test fixtures for p2_sam.py: a SAM small enough to run on a CPU in milliseconds.

Imported by the tests (`from sam_fixtures import tiny_sam`) and by bench.py for its CPU SAM row
(`from tests.sam_fixtures import tiny_sam`, from the repository root)."""

from functools import partial

import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)


def tiny_sam(img_size=64, embed_dim=32, prompt_dim=32, seed=0):
    """A randomly initialised SAM small enough for CPU tests and bench.py --device cpu:
    segment_anything's _build_sam with every size shrunk, a 2-block ViT on 64 px (4x4 tokens,
    one windowed block and one global one), the real prompt encoder and mask decoder.
    `embed_dim` is the ViT width p2_sam reads the model type from (768: vit_b)."""
    torch.manual_seed(seed)
    tokens = img_size // 16
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=2, embed_dim=embed_dim, img_size=img_size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=2, patch_size=16,
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=[1], window_size=2,
            out_chans=prompt_dim),
        prompt_encoder=PromptEncoder(
            embed_dim=prompt_dim, image_embedding_size=(tokens, tokens),
            input_image_size=(img_size, img_size), mask_in_chans=4),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=prompt_dim, mlp_dim=64,
                                          num_heads=2),
            transformer_dim=prompt_dim, iou_head_depth=2, iou_head_hidden_dim=32),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
    ).eval()
