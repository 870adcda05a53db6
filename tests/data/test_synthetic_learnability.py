"""The synthetic corpus is learnable: checked with models far simpler than Oscar.

Region class centroids estimated from the train split and a bag-of-words match between captions
and tags retrieve well above chance, attributes named in captions are visible in the region
features, and the vocabulary is the real VinVL one. If these simple models find the signal, a
tiny transformer has it too. (File layout, noise and determinism: test_synthetic.py.)
"""
import json
import os
import re
import time

import numpy as np
import pytest

from vinvl.data import write_synthetic_corpus
from vinvl.data.formats import APPEARANCE_DIM
from vinvl.assets import LABELMAP_PATH as LABELMAP
from vinvl.data.synthetic import SceneGenerator, generate_split

SHARED_LABELMAP = "/work/shared/data/vinvl_labelmap.json"


@pytest.fixture(scope="module")
def generated():
    generator = SceneGenerator(seed=0)
    return generator, list(generate_split(generator, "train", 300, 0)), list(generate_split(generator, "test", 100, 0))


def class_words(caption, classes):
    return set(caption.split()) & classes


def test_objects_come_from_the_real_vinvl_vocabulary(generated):
    generator, train, test = generated
    with open(LABELMAP) as f:
        labelmap = json.load(f)
    if os.path.isfile(SHARED_LABELMAP):
        with open(SHARED_LABELMAP) as f:
            assert json.load(f) == labelmap  # the shipped copy is the real file
    assert set(generator.classes) <= set(labelmap["label_to_idx"])
    assert set(generator.attributes) <= set(labelmap["attribute_to_idx"])
    used = {t for im in train + test for t in im.tags}
    assert 40 <= len(used) <= 60  # a modest subset: a few hundred images repeat every class


def test_train_centroids_classify_test_regions(generated):
    _, train, test = generated
    classes = sorted({t for im in train for t in im.tags})
    sums = np.zeros((len(classes), APPEARANCE_DIM))
    counts = np.zeros(len(classes))
    for image in train:
        for tag, feature in zip(image.tags, image.features):
            sums[classes.index(tag)] += feature[:APPEARANCE_DIM]
            counts[classes.index(tag)] += 1
    centroids = sums / counts[:, None]
    hits = []
    for image in test:
        distances = ((image.features[:, None, :APPEARANCE_DIM] - centroids[None]) ** 2).sum(-1)
        hits += [classes[j] == t for j, t in zip(distances.argmin(1), image.tags)]
    assert np.mean(hits) > 0.98


def test_attributes_named_in_captions_are_visible_in_the_features(generated):
    """The region of a caption's "white car" carries the white component, found among all attributes."""
    generator, _, test = generated
    centred = generator.attr_protos - generator.attr_protos.mean(0)
    hits = []
    for image in test:
        for caption in image.captions:
            for attribute in generator.attributes:
                for match in re.finditer(rf"\b{attribute} (\w+)", caption):
                    name = match.group(1)
                    if image.tags.count(name) != 1:  # missed by the detector, or ambiguous
                        continue
                    residual = image.features[image.tags.index(name), :APPEARANCE_DIM]
                    residual = residual - generator.class_protos[generator.classes.index(name)]
                    hits.append(generator.attributes[int(np.argmax(centred @ residual))] == attribute)
    assert len(hits) > 100 and np.mean(hits) > 0.95


def test_captions_retrieve_their_image_by_all_words_not_by_one(generated):
    """Caption class words vs tags: R@1 far above chance (1 in 100); one word alone ties with several."""
    generator, _, test = generated
    classes = set(generator.classes)
    captions = [(i, c) for i, image in enumerate(test) for c in image.captions]
    scores = np.array([[len(class_words(c, classes) & set(im.tags)) for im in test] for _, c in captions], float)
    truth = np.array([i for i, _ in captions])
    ranks = (scores > scores[np.arange(len(captions)), truth][:, None]).sum(1)  # ties count for the caption
    assert (ranks < 1).mean() > 0.5 and (ranks < 10).mean() > 0.9
    tagged_by = {c: sum(c in im.tags for im in test) for c in classes}
    best_single_word = [min(tagged_by[w] for w in class_words(c, classes)) for _, c in captions]
    assert np.median(best_single_word) >= 3


def test_writing_300_images_takes_a_couple_of_seconds(tmp_path):
    write_synthetic_corpus(str(tmp_path / "warm"), {"test": 2}, seed=0)  # torch import, labelmap
    start = time.perf_counter()
    write_synthetic_corpus(str(tmp_path / "c"), {"train": 300}, seed=0)
    assert time.perf_counter() - start < 5.0
