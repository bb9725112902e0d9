"""SAM 2's mask decoder with its prompt-independent image-side work done once per image.

Without a mask prompt, the first two-way attention block sees the same image tokens on every click:
the image tokens plus the no-mask embedding, their key/value projections for token->image attention
and their query projection for image->token attention. Those are computed when the image is encoded
(`precompute_image_side`) and reused by `decode` on every click; the rest mirrors sam2 1.1.0's
MaskDecoder.predict_masks + TwoWayTransformer.forward for one image (tests compare the two).
Clicks with a mask prompt (refinement) use sam2's own decoder.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch  # deferred: heavy, optional (only SAM 2 users need it)


def precompute_image_side(model, image_embed: "torch.Tensor", image_pe: "torch.Tensor") -> dict[str, "torch.Tensor"]:
    """Prompt-independent decoder inputs for one image.

    image_embed: [1, C, h, w] (no-memory embedding added); image_pe: [1, C, h, w] dense positional encoding.
    Returns keys [1, hw, C] (image + no-mask embedding), and layer-0 projections t2i_k, t2i_v, i2t_q [1, hw, C/2].
    """
    decoder = model.sam_mask_decoder
    prompt_encoder = model.sam_prompt_encoder
    first = decoder.transformer.layers[0]
    no_mask = prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
    keys = (image_embed + no_mask).flatten(2).permute(0, 2, 1)  # [1, hw, C]
    key_pe = image_pe.flatten(2).permute(0, 2, 1)
    with_pe = keys + key_pe
    return {
        "keys": keys.contiguous(),
        "t2i_k": first.cross_attn_token_to_image.k_proj(with_pe),
        "t2i_v": first.cross_attn_token_to_image.v_proj(keys),
        "i2t_q": first.cross_attn_image_to_token.q_proj(with_pe),
    }


def _attend(attention, q: "torch.Tensor", k: "torch.Tensor", v: "torch.Tensor") -> "torch.Tensor":
    """sam2 Attention.forward with q, k, v already projected."""
    import torch.nn.functional as F  # deferred: heavy, optional (only SAM 2 users need it)

    q = attention._separate_heads(q, attention.num_heads)
    k = attention._separate_heads(k, attention.num_heads)
    v = attention._separate_heads(v, attention.num_heads)
    out = F.scaled_dot_product_attention(q, k, v)
    return attention.out_proj(attention._recombine_heads(out))


def decode(
    model,
    image_side: dict[str, "torch.Tensor"],
    key_pe: "torch.Tensor",
    high_res_features: list["torch.Tensor"],
    sparse_prompt_embeddings: "torch.Tensor",
    hw: tuple[int, int],
    multimask_output: bool,
) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Low-res mask logits [1, M, 4h, 4w] and predicted IoU [1, M] (M = 3 with multimask, else 1).

    key_pe: [1, hw, C] flattened dense positional encoding (shared by all images of one model).
    Only for prompts without a mask input; eval mode (no dropout).
    """
    import torch  # deferred: heavy, optional (only SAM 2 users need it)

    decoder = model.sam_mask_decoder
    transformer = decoder.transformer
    if decoder.pred_obj_scores:
        output_tokens = torch.cat(
            [decoder.obj_score_token.weight, decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0
        )
        s = 1
    else:
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        s = 0
    tokens = torch.cat((output_tokens.unsqueeze(0), sparse_prompt_embeddings), dim=1)
    queries, query_pe, keys = tokens, tokens, image_side["keys"]

    for index, layer in enumerate(transformer.layers):
        if layer.skip_first_layer_pe:
            queries = layer.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = queries + layer.self_attn(q=q, k=q, v=queries)
        queries = layer.norm1(queries)

        q = queries + query_pe
        t2i = layer.cross_attn_token_to_image
        if index == 0:
            attn_out = _attend(t2i, t2i.q_proj(q), image_side["t2i_k"], image_side["t2i_v"])
        else:
            attn_out = t2i(q=q, k=keys + key_pe, v=keys)
        queries = layer.norm2(queries + attn_out)
        queries = layer.norm3(queries + layer.mlp(queries))

        q = queries + query_pe
        i2t = layer.cross_attn_image_to_token
        if index == 0:
            attn_out = _attend(i2t, image_side["i2t_q"], i2t.k_proj(q), i2t.v_proj(queries))
        else:
            attn_out = i2t(q=keys + key_pe, k=q, v=queries)
        keys = layer.norm4(keys + attn_out)

    q = queries + query_pe
    attn_out = transformer.final_attn_token_to_image(q=q, k=keys + key_pe, v=keys)
    hs = transformer.norm_final_attn(queries + attn_out)

    iou_token_out = hs[:, s, :]
    mask_tokens_out = hs[:, s + 1 : s + 1 + decoder.num_mask_tokens, :]
    c = keys.shape[-1]
    src = keys.transpose(1, 2).reshape(1, c, *hw)
    if decoder.use_high_res_features:
        dc1, ln1, act1, dc2, act2 = decoder.output_upscaling
        feat_s0, feat_s1 = high_res_features
        upscaled = act1(ln1(dc1(src) + feat_s1))
        upscaled = act2(dc2(upscaled) + feat_s0)
    else:
        upscaled = decoder.output_upscaling(src)
    hyper_in = torch.stack(
        [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1
    )
    b, c_up, h_up, w_up = upscaled.shape
    masks = (hyper_in @ upscaled.view(b, c_up, h_up * w_up)).view(b, -1, h_up, w_up)
    iou_pred = decoder.iou_prediction_head(iou_token_out)

    if multimask_output:
        return masks[:, 1:], iou_pred[:, 1:]
    if decoder.dynamic_multimask_via_stability:
        return decoder._dynamic_multimask_via_stability(masks, iou_pred)
    return masks[:, 0:1], iou_pred[:, 0:1]
