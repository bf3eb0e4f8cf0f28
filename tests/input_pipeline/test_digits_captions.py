"""Tests of the captioned digits: captions name the label, vary in wording,
are the same at every build, and never use the held-out prompt templates."""

from __future__ import annotations

import numpy as np

from input_pipeline import digits
from input_pipeline import digits_captions as dc
from input_pipeline import sources


def test_every_caption_names_its_digit_as_a_word_or_numeral():
  for key, label in [(0, 0), (5, 7), (1796, 9)]:
    texts = dc.captions(key, label)
    assert len(texts) == len(set(texts)) == dc.NUM_CAPTIONS
    assert all(dc.CLASS_NAMES[label] in t or str(label) in t for t in texts)


def test_captions_are_a_function_of_the_record_key():
  assert dc.captions(42, 3) == dc.captions(42, 3)
  assert dc.captions(42, 3) != dc.captions(43, 3)


def test_held_out_templates_never_appear_in_training_captions():
  keys, _, labels = digits.load_split("train")
  used = set()
  for key, label in zip(keys, labels):
    for caption in dc.captions(int(key), int(label)):
      used |= {t for t in dc.TRAIN_TEMPLATES + dc.HELD_OUT_TEMPLATES
               if caption in (t.format(dc.CLASS_NAMES[label]),
                              t.format(label))}
  assert used == set(dc.TRAIN_TEMPLATES)  # All of them, and no other.


def test_built_dataset_has_the_digits_splits_with_five_captions_each(
    tmp_path):
  source = sources.get_source("sklearn_digits_captions", "test",
                              str(tmp_path))
  keys, _, labels = digits.load_split("test")
  assert len(source) == 360
  record = source[7]
  assert record["texts"].shape == (dc.NUM_CAPTIONS,)
  index = int(np.flatnonzero(keys == record["id"])[0])
  assert record["label"] == labels[index]
  assert [t.decode() for t in record["texts"]] == dc.captions(
      int(record["id"]), int(record["label"]))
