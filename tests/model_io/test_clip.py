"""Tests of the open_clip / OpenAI CLIP importer: a small OpenAI-style CLIP
(QuickGELU, class-token position, ln_pre, bias-free projections, argmax-EOT
pooling) with random weights gives the same embeddings in open_clip and in
our two-tower model, from .safetensors, torch.save and TorchScript files."""

import functools

import flax
import jax
import numpy as np
import pytest

from big_vision_like import config as config_lib
from big_vision_like import model_io
from big_vision_like.checkpoint import tree_paths
from big_vision_like.model_io import surgery
from big_vision_like.models import two_towers

D, HEADS, DEPTH, EMBED, PATCH, SIZE, VOCAB, LEN = 32, 2, 2, 16, 8, 32, 100, 12
ARCH = dict(width=D, depth=DEPTH, mlp_dim=4 * D, num_heads=HEADS)


def _model() -> two_towers.TwoTowers:
  """`two_towers.openai_clip`'s fields at a small size."""
  kwargs = two_towers.openai_clip("B/32")
  kwargs["image"].update(ARCH, patch_size=PATCH)
  kwargs["text"].update(ARCH, vocab_size=VOCAB)
  return two_towers.TwoTowers(**{**kwargs, "out_dim": EMBED})


def _target(model):
  images = jax.ShapeDtypeStruct((1, SIZE, SIZE, 3), np.float32)
  tokens = jax.ShapeDtypeStruct((1, LEN), np.int32)
  return jax.eval_shape(lambda x, t: flax.core.meta.unbox(model.init(
      jax.random.key(0), x, t, train=False)), images, tokens)["params"]


def _tokens(rng, n=4):
  """Token ids with an end-of-text (the highest id) at varied positions,
  zeros after it, as OpenAI's tokenizer pads."""
  tokens = rng.integers(1, VOCAB - 1, (n, LEN))
  for i, end in enumerate(rng.choice(np.arange(2, LEN), n, replace=False)):
    tokens[i, end] = VOCAB - 1
    tokens[i, end + 1:] = 0
  return tokens.astype(np.int32)


@pytest.fixture(scope="module")
def reference(open_clip, torch):
  """(open_clip CLIP with random non-trivial weights, images, tokens,
  expected image and text embeddings)."""
  oc_model = open_clip.model
  torch.manual_seed(0)
  clip = oc_model.CLIP(
      embed_dim=EMBED, quick_gelu=True,
      vision_cfg=oc_model.CLIPVisionCfg(
          layers=DEPTH, width=D, head_width=D // HEADS, patch_size=PATCH,
          image_size=SIZE),
      text_cfg=oc_model.CLIPTextCfg(
          context_length=LEN, vocab_size=VOCAB, width=D, heads=HEADS,
          layers=DEPTH)).eval()
  with torch.no_grad():
    for p in clip.parameters():  # LayerNorms start at 1 and 0: perturb all.
      p.add_(0.1 * torch.randn_like(p))
  rng = np.random.default_rng(0)
  images = rng.normal(size=(3, SIZE, SIZE, 3)).astype(np.float32)
  tokens = _tokens(rng)
  with torch.no_grad():
    zimg = clip.encode_image(torch.tensor(images.transpose(0, 3, 1, 2)),
                             normalize=True).numpy()
    ztxt = clip.encode_text(torch.tensor(tokens).long(),
                            normalize=True).numpy()
  return clip, images, tokens, zimg, ztxt


def _save(torch, clip, path, kind):
  state_dict = clip.state_dict()
  if kind == "safetensors":
    import safetensors.torch  # pylint: disable=import-outside-toplevel
    safetensors.torch.save_file(
        {k: v.contiguous() for k, v in state_dict.items()}, path)
  elif kind == "torch.save":  # open_clip's training checkpoints nest it.
    torch.save({"epoch": 1, "state_dict": state_dict}, path)
  else:  # OpenAI's release files are TorchScript archives.
    images = torch.zeros(1, 3, SIZE, SIZE)
    tokens = torch.zeros(1, LEN, dtype=torch.long)
    torch.jit.trace(clip, (images, tokens), check_trace=False).save(path)


@pytest.mark.parametrize("kind,suffix", [("safetensors", "safetensors"),
                                         ("torch.save", "pt"),
                                         ("torchscript", "pt")])
def test_open_clip_weights_give_open_clips_embeddings(
    reference, torch, tmp_path, kind, suffix):
  clip, images, tokens, want_img, want_txt = reference
  path = str(tmp_path / f"clip.{suffix}")
  _save(torch, clip, path, kind)
  model = _model()
  fitted, fresh = surgery.fit(model_io.load("open_clip", path),
                              _target(model))
  assert not fresh
  params = tree_paths.to_nested(fitted)
  zimg, ztxt, out = jax.jit(functools.partial(model.apply, train=False))(
      {"params": params}, images, tokens)
  np.testing.assert_allclose(zimg, want_img, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(ztxt, want_txt, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(out["t"], clip.logit_scale.exp().item(),
                             rtol=1e-6)
  # Not trivially equal: the embeddings differ between inputs.
  assert np.abs(want_img[0] - want_img[1]).max() > 0.1


def _random_state_dict():
  """Random arrays with open_clip's names and shapes for `_model()`."""
  rng = np.random.default_rng(0)
  shapes = {"visual.conv1.weight": (D, 3, PATCH, PATCH),
            "visual.class_embedding": (D,),
            "visual.positional_embedding": (1 + (SIZE // PATCH) ** 2, D),
            "visual.proj": (D, EMBED), "text_projection": (D, EMBED),
            "token_embedding.weight": (VOCAB, D),
            "positional_embedding": (LEN, D), "logit_scale": ()}
  for ln in ("visual.ln_pre", "visual.ln_post", "ln_final"):
    shapes |= {f"{ln}.weight": (D,), f"{ln}.bias": (D,)}
  for tower in ("visual.transformer", "transformer"):
    for i in range(DEPTH):
      b = f"{tower}.resblocks.{i}"
      shapes |= {f"{b}.attn.in_proj_weight": (3 * D, D),
                 f"{b}.attn.in_proj_bias": (3 * D,),
                 f"{b}.attn.out_proj.weight": (D, D),
                 f"{b}.attn.out_proj.bias": (D,),
                 f"{b}.mlp.c_fc.weight": (4 * D, D),
                 f"{b}.mlp.c_fc.bias": (4 * D,),
                 f"{b}.mlp.c_proj.weight": (D, 4 * D),
                 f"{b}.mlp.c_proj.bias": (D,)}
      for ln in ("ln_1", "ln_2"):
        shapes |= {f"{b}.{ln}.weight": (D,), f"{b}.{ln}.bias": (D,)}
  return {n: rng.normal(size=s).astype(np.float32) for n, s in shapes.items()}


def test_every_weight_of_the_model_has_a_row_in_the_name_map():
  model = _model()
  state_dict = _random_state_dict()
  state_dict["attn_mask"] = np.zeros((LEN, LEN), np.float32)  # A buffer.
  for name, size in (("input_resolution", SIZE), ("context_length", LEN),
                     ("vocab_size", VOCAB)):  # Sizes, in OpenAI's files.
    state_dict[name] = np.array(size)
  fitted, fresh = surgery.fit(model_io.clip.convert(state_dict),
                              _target(model))
  assert not fresh
  np.testing.assert_array_equal(
      fitted["img/cls"][0, 0], state_dict["visual.class_embedding"])
  np.testing.assert_array_equal(fitted["txt/head/kernel"],
                                state_dict["text_projection"])


def test_a_missing_weight_fails_listing_it():
  model = _model()
  state_dict = _random_state_dict()
  del state_dict["visual.ln_pre.weight"]
  with pytest.raises(config_lib.ConfigError,
                     match=r"in the model, not in the file \(1\): "
                           r"img/ln_pre/scale \(32,\)"):
    surgery.fit(model_io.clip.convert(state_dict), _target(model))


def test_a_resnet_image_tower_fails_naming_its_weights():
  state_dict = _random_state_dict()
  state_dict["visual.attnpool.k_proj.weight"] = np.zeros((D, D))
  with pytest.raises(config_lib.ConfigError,
                     match=r"Not a CLIP with a ViT image tower.*"
                           r"visual\.attnpool\.k_proj\.weight"):
    model_io.clip.convert(state_dict)
