r"""Fine-tune (or probe) a pretrained model on a TFDS dataset or image folder.

  python main.py --config=configs/transfer.py:model=demo,init=workdirs/demo04,dataset=sklearn_digits,classes=5-9,shots=10 --workdir=workdirs/ft59

Arguments (`:key=value,...`):
  model      "demo" (configs/demo.py's ViT, 16 px) or a ViT variant ("S/16",
             "B/16", ...; 224 px, global-average pooled).
  init       the weights to start from: a run's workdir (format=orbax) or a
             file; "" trains from scratch. Loaded with the head
             re-initialised for this task and the position embeddings
             resampled when `res` gives another patch grid
             (config.init_from, trainers/warm_start.py).
  format     init's format, a key of model_io.IMPORTERS (orbax,
             big_vision_npz, safetensors, timm_vit).
  dataset    a TFDS name (train_split / test_split), or a path (anything
             with a "/") to an image folder of class sub-folders (splits
             "train" and "val", see input_pipeline/folder.py).
  num_classes  needed unless dataset=sklearn_digits or classes is given.
  classes    train and test on these labels only, relabelled 0..n-1 ("5-9",
             "0-2+7").
  shots      train on that many examples per class (the first of a
             permutation seeded by `seed`: the few-shot probe's draw); 0: all.
  res        image side in pixels (default: the model's pretraining one).
  freeze     train the head only (the rest frozen: a linear probe by SGD).
  layer_decay  layer-wise lr decay (e.g. 0.75; 0 turns it off).
  probes     also run the few-shot, linear-probe and k-NN evaluators on the
             target data (frozen features of the model being trained).
  steps, batch, lr, seed, runlocal (smoke mode: 2 steps).

Expected: in the transfer demo (benchmarks/transfer_demo.py: pretraining
on digits 0-4 with configs/demo.py:classes=0-4, then this config on 5-9 with
lr=0.001,steps=150), full fine-tuning on 10 shots scored 0.739 test accuracy
on 5-9 (from scratch, same images and recipe: 0.761); 1 shot: 0.378 (0.306).
README.md has the whole table.
"""

import ml_collections

from big_vision_like import config as config_lib
from configs import common

# model argument -> (model fields, pretraining image side).
DEMO_MODEL = dict(width=128, depth=4, mlp_dim=512, num_heads=4,
                  patch_size=(4, 4), pool_type="gap", posemb="learn")


def _model(name: str) -> tuple[dict, int]:
  if name == "demo":
    return dict(DEMO_MODEL), 16
  return dict(variant=name, pool_type="gap"), 224


def _data(arg: ml_collections.ConfigDict, split: str, **subset) -> dict:
  if "/" in arg.dataset:
    base = dict(kind="imagefolder", path=arg.dataset,
                split="train" if split == arg.train_split else "val")
  else:
    base = dict(name=arg.dataset, split=split)
  return common.with_classes(base, common.parse_classes(arg.classes),
                             **subset)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = common.parse_arg(
      arg, model="demo", init="", format="orbax", dataset="sklearn_digits",
      train_split="train", test_split="test", num_classes=0, classes="",
      shots=0, seed=0, res=0, freeze=False, layer_decay=0.0, probes=False,
      steps=200, batch=64, lr=0.0003, runlocal=False)
  model, pretrain_res = _model(arg.model)
  res = arg.res or pretrain_res
  classes = common.parse_classes(arg.classes)
  num_classes = len(classes) or arg.num_classes or (
      10 if arg.dataset == "sklearn_digits" else 0)
  if not num_classes:
    raise config_lib.ConfigError(
        f"configs/transfer.py: the number of classes of {arg.dataset!r} is "
        "unknown; add num_classes=<n> (or classes=...) to the config "
        "argument.")
  shots = arg.shots or None
  pp = common.classification_pp(res, num_classes)

  c = ml_collections.ConfigDict()
  c.seed = arg.seed
  c.total_steps = arg.steps
  batch = min(arg.batch, shots * num_classes) if shots else arg.batch
  c.input = dict(
      data=_data(arg, arg.train_split, per_class=shots, seed=arg.seed),
      pp=pp, batch_size=batch)
  c.model_name = "vit"
  c.model = dict(num_classes=num_classes, **model)
  c.objective = dict(name="supervised", loss="softmax_xent")
  c.optim = dict(name="adamw", lr=arg.lr, wd=0.0001, grad_clip_norm=1.0)
  if arg.layer_decay:
    c.optim.layer_decay = arg.layer_decay
  if arg.freeze:
    c.optim.frozen = ["(?!head/).*"]  # Everything but the head.
  c.schedule = dict(warmup_steps=min(20, arg.steps // 10),
                    decay_type="cosine")
  if arg.init:
    c.init_from = dict(path=arg.init, format=arg.format, reinit_head=True,
                       resample_posemb=True)
  eval_batch = 360 if arg.dataset == "sklearn_digits" else 256
  c.evals = dict(test=dict(
      type="classification", data=_data(arg, arg.test_split), pp=pp,
      batch_size=eval_batch))
  if arg.probes:
    c.evals.update(common.probe_evals(
        _data(arg, arg.train_split), _data(arg, arg.test_split), pp,
        batch_size=eval_batch))
  c.log_every_steps = max(1, arg.steps // 10)
  c.ckpt_every_steps = arg.steps
  if arg.runlocal:
    common.runlocal(c)
    if arg.dataset == "sklearn_digits":
      c.mock_examples = None  # Embedded: the real digits, no mock needed.
  return c
