"""Distillation targets computed once: the frozen encoder's pooled states and the match head's
scores of fixed candidate lists.

Fitting the contrastive heads of a converted checkpoint (``--objective distill --train_only
heads``) changes nothing the encoder or the match head compute, so the in-batch route
recomputes, every step, numbers that never change: the caption-only and image-only encoder
passes and the B x B teacher pairs. With ``--distill_candidates N`` the fit instead computes,
once, the pooled states every caption and image gets from the frozen encoder and the match
head's scores of fixed lists (each caption with its own image and N random others, each image
with all its own captions and N random others), and then trains the heads over those arrays
for as many epochs as wanted: a step is a few small matrix products. Scored pairs are what
cost, so the lists reach a large collection (any image + caption data: the pairing is used only
to put each query's own match in its list) at the price the in-batch route pays for a few
hundred steps.

Random candidates teach the heads what the match head rejects; what a first stage gets wrong
are the near misses, which random lists rarely hold. With ``--distill_mined M`` a second fit,
starting from the first one's heads, adds to each list the M candidates those heads rank
highest that are not listed yet (on the 10K-image synthetic collection the match head scores
them above the queries' own matches on average), so the heads learn the match head's order
where it matters.

The arrays are written to ``output_dir`` with the settings that produced them, and reused by a
resumed or repeated run with the same settings. They depend on the encoder and the match head
(and, for mined candidates, the contrastive heads that mined them), not on where the model was
loaded from: a run that continues a fit finds the fit's arrays beside the model it starts from
and reuses them, or their random part when it adds mined candidates.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import paddle
from paddlenlp.utils.log import logger
from tqdm.auto import tqdm

from ..oscar.convert import HEAD_PREFIXES
from ..oscar.modeling import OscarForImageTextRetrieval
from ..oscar.processor import OscarProcessor
from ..retrieval.distributed import all_reduce_sum, rank, shard
from ..retrieval.engine import RetrievalEngine
from ..retrieval.gallery import Gallery

__all__ = [
    "TARGETS_FILE",
    "TargetSettings",
    "DistillationTargets",
    "FrozenStateQueries",
    "FrozenStateCollator",
    "distillation_targets",
    "mine_candidates",
    "split_projections",
    "target_settings",
    "weight_checksums",
    "load_or_compute_targets",
]

TARGETS_FILE = "distill_targets.npz"
TARGETS_LAYOUT = 4  # bump when what the arrays hold changes: older files are then computed again
CAPTION_QUERY, IMAGE_QUERY = 0, 1


@dataclass(frozen=True)
class TargetSettings:
    """What the targets depend on; a saved file is reused only when all of it matches."""

    layout: int  # TARGETS_LAYOUT of the code that wrote them
    teacher_weights: str  # sha256 of every weight but the contrastive heads: what pools and scores
    miner_weights: str  # sha256 of the contrastive heads that mined candidates ("" when none were)
    data_dir: str
    split: str
    num_images: int
    num_captions: int
    candidates: int
    mined: int
    seed: int
    max_seq_len: int
    max_img_seq_len: int


@dataclass
class DistillationTargets:
    """Frozen pooled states and teacher scores of a collection's captions and images.

    ``caption_lists [C, 1 + N + H]`` image indices (the caption's own image first, then N random
    and H mined ones) with their match scores (logit margins) ``caption_scores``;
    ``image_lists [I, M + N + H]`` caption indices (the image's own captions first, padded with -1
    to the most any image has, M, then the random and mined ones) with ``image_scores`` (0 where
    padded).
    """

    caption_states: np.ndarray  # [C, hidden]
    image_states: np.ndarray  # [I, hidden]
    caption_lists: np.ndarray  # [C, 1 + N + H] image indices
    caption_scores: np.ndarray  # [C, 1 + N + H]
    image_lists: np.ndarray  # [I, M + N + H] caption indices, -1 = padding
    image_scores: np.ndarray  # [I, M + N + H]

    @property
    def num_queries(self) -> int:
        return len(self.caption_lists) + len(self.image_lists)

    def save(self, path: str, settings: TargetSettings) -> None:
        """Write atomically (a killed run leaves no partial file that a later run would trust)."""
        arrays = {name: getattr(self, name) for name in self.__dataclass_fields__}
        partial = f"{path}.partial.npz"
        np.savez(partial, settings=np.asarray(json.dumps(asdict(settings), sort_keys=True)), **arrays)
        os.replace(partial, path)

    @classmethod
    def load(cls, path: str, settings: TargetSettings) -> Optional["DistillationTargets"]:
        """The targets saved at ``path`` if they were computed with ``settings``, else None."""
        if not os.path.isfile(path):
            return None
        try:
            with np.load(path) as saved:
                if str(saved["settings"]) != json.dumps(asdict(settings), sort_keys=True):
                    return None
                return cls(**{name: saved[name] for name in cls.__dataclass_fields__})
        except (OSError, ValueError, KeyError):  # unreadable or from another version: compute again
            return None


def _random_others(groups: np.ndarray, pool: int, count: int, group_of: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``[Q, count]`` items drawn from ``range(pool)`` (with replacement) whose group
    ``group_of[item]`` differs from the query's ``groups[q]`` (its own image)."""
    drawn = rng.integers(0, pool, size=(len(groups), count))
    clash = group_of[drawn] == groups[:, None]
    while clash.any():  # redraw the few that hit the query's own image
        drawn[clash] = rng.integers(0, pool, size=int(clash.sum()))
        clash = group_of[drawn] == groups[:, None]
    return drawn


def _own_captions(gallery: Gallery) -> np.ndarray:
    """``[I, M]``: each image's caption indices, padded with -1 to the most any image has."""
    counts = np.diff(gallery.caption_offsets)
    slots = np.arange(counts.max())
    own = gallery.caption_offsets[:-1, None] + slots[None, :]
    return np.where(slots[None, :] < counts[:, None], own, -1)


_MINING_BUDGET = 1 << 25  # similarities ranked at a time (128 MB of float32, twice that of indices)


def mine_candidates(
    query_embeds: np.ndarray, item_embeds: np.ndarray, listed: np.ndarray, count: int, progress: bool = False
) -> np.ndarray:
    """``[Q, count]`` item indices each query's embedding ranks highest, best first, leaving out
    the query's ``listed [Q, L]`` items (-1 entries list nothing).

    Under data parallel each rank ranks its share of the queries and the shares are summed, so
    every rank holds the same lists (the scoring that follows is shared out by pair position).
    """
    num_items = len(item_embeds)
    _check_room_to_mine(count, num_items, listed.shape[1])
    mined = np.zeros((len(query_embeds), count), dtype=np.int64)
    chunk = max(1, _MINING_BUDGET // (num_items + 1))
    starts = shard(range(0, len(query_embeds), chunk))
    for start in tqdm(starts, desc="mine", unit="chunk", disable=not progress or rank() != 0):
        stop = min(start + chunk, len(query_embeds))
        # A last column of -inf takes the -1 entries, so they leave out nothing real.
        similarity = np.full((stop - start, num_items + 1), -np.inf, dtype=np.float32)
        similarity[:, :num_items] = query_embeds[start:stop] @ item_embeds.T
        similarity[np.arange(stop - start)[:, None], listed[start:stop]] = -np.inf
        best = np.argpartition(similarity[:, :num_items], num_items - count, axis=1)[:, num_items - count :]
        order = np.argsort(-np.take_along_axis(similarity, best, axis=1), axis=1, kind="stable")
        mined[start:stop] = np.take_along_axis(best, order, axis=1)
    return all_reduce_sum(mined)


def _check_room_to_mine(count: int, num_items: int, listed: int) -> None:
    """Refuse to mine ``count`` more items per query when ``listed`` may leave fewer unlisted."""
    if count > num_items - listed:
        raise ValueError(
            f"cannot mine {count} candidates per query among {num_items} items when up to {listed} are listed already"
        )


def _project(project, states: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """Pooled states through a contrastive head (``model.project_text`` / ``project_image``), in chunks."""
    with paddle.no_grad():
        return np.concatenate([project(paddle.to_tensor(states[s : s + chunk])).numpy() for s in range(0, len(states), chunk)])


def distillation_targets(
    engine: RetrievalEngine,
    gallery: Gallery,
    candidates: int,
    seed: int,
    mined: int = 0,
    base: Optional[DistillationTargets] = None,
) -> DistillationTargets:
    """Pool every caption and image through the frozen encoder and score the candidate lists:
    ``candidates`` random others per query, then ``mined`` more ranked highest by the model's own
    contrastive heads (which must be trained: the caller checks). ``base``: the targets of the
    random lists alone, already computed for this encoder, match head, data, N and seed; only
    the mined pairs are then scored."""
    if candidates < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates}")
    if mined < 0:
        raise ValueError(f"mined must be >= 0, got {mined}")
    if gallery.num_images < 2:
        raise ValueError(f"distillation lists need at least 2 images, the collection has {gallery.num_images}")
    if mined:  # before any pair is scored
        _check_room_to_mine(mined, gallery.num_images, 1 + candidates)
        _check_room_to_mine(mined, gallery.num_captions, int(np.diff(gallery.caption_offsets).max()) + candidates)
    if base is None:
        base = _random_list_targets(engine, gallery, candidates, seed)
    return _with_mined(engine, gallery, base, mined) if mined else base


def _random_list_targets(engine: RetrievalEngine, gallery: Gallery, candidates: int, seed: int) -> DistillationTargets:
    """States, and each query's own match(es) + ``candidates`` random others scored."""
    caption_to_image = np.asarray(gallery.caption_to_image, dtype=np.int64)
    rng = np.random.default_rng([seed, candidates])
    image_ids = np.arange(gallery.num_images)
    others = _random_others(caption_to_image, gallery.num_images, candidates, image_ids, rng)
    caption_lists = np.concatenate([caption_to_image[:, None], others], axis=1)
    others = _random_others(image_ids, gallery.num_captions, candidates, caption_to_image, rng)
    image_lists = np.concatenate([_own_captions(gallery), others], axis=1)
    caption_scores, image_scores = _score_lists(engine, gallery, caption_lists, image_lists)
    return DistillationTargets(
        caption_states=engine.pool_captions(gallery),
        image_states=engine.pool_images(gallery),
        caption_lists=caption_lists,
        caption_scores=caption_scores,
        image_lists=image_lists,
        image_scores=image_scores,
    )


def _with_mined(engine: RetrievalEngine, gallery: Gallery, base: DistillationTargets, mined: int) -> DistillationTargets:
    """``base`` with each list extended by the ``mined`` unlisted candidates the model's
    contrastive heads rank highest, those pairs scored."""
    engine.model.eval()
    caption_embeds = _project(engine.model.project_text, base.caption_states)
    image_embeds = _project(engine.model.project_image, base.image_states)
    caption_mined = mine_candidates(caption_embeds, image_embeds, base.caption_lists, mined, engine.progress)
    image_mined = mine_candidates(image_embeds, caption_embeds, base.image_lists, mined, engine.progress)
    caption_scores, image_scores = _score_lists(engine, gallery, caption_mined, image_mined)
    return DistillationTargets(
        caption_states=base.caption_states,
        image_states=base.image_states,
        caption_lists=np.concatenate([base.caption_lists, caption_mined], axis=1),
        caption_scores=np.concatenate([base.caption_scores, caption_scores], axis=1),
        image_lists=np.concatenate([base.image_lists, image_mined], axis=1),
        image_scores=np.concatenate([base.image_scores, image_scores], axis=1),
    )


def _score_lists(
    engine: RetrievalEngine, gallery: Gallery, caption_lists: np.ndarray, image_lists: np.ndarray
) -> Tuple[np.ndarray, np.ndarray]:
    """Match scores of every caption with its listed images ``[C, L]`` and every image with its
    listed captions ``[I, L']`` (-1 = padding, scored 0), in one pass over the pairs."""
    listed = image_lists >= 0
    logger.info(f"Distillation targets: scoring {caption_lists.size + int(listed.sum())} pairs")
    image_ids = np.arange(gallery.num_images)
    images = np.concatenate([caption_lists.ravel(), np.broadcast_to(image_ids[:, None], image_lists.shape)[listed]])
    captions = np.concatenate([np.repeat(np.arange(gallery.num_captions), caption_lists.shape[1]), image_lists[listed]])
    scores = engine.score_pairs(gallery, images, captions)
    split = caption_lists.size
    image_scores = np.zeros(image_lists.shape, dtype=np.float32)
    image_scores[listed] = scores[split:]
    return scores[:split].reshape(caption_lists.shape), image_scores


class FrozenStateQueries(paddle.io.Dataset):
    """One item per query: every caption (ranking its image list), then every image."""

    def __init__(self, targets: DistillationTargets):
        self.targets = targets
        self.num_captions = len(targets.caption_lists)

    def __len__(self) -> int:
        return self.targets.num_queries

    def __getitem__(self, index: int) -> Dict[str, int]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        if index < self.num_captions:
            return {"kind": CAPTION_QUERY, "index": index}
        return {"kind": IMAGE_QUERY, "index": index - self.num_captions}


class FrozenStateCollator:
    """A batch of queries as the model's inputs: pooled states to project, and teacher scores.

    ``caption_states`` holds the caption queries' states and then the image queries' candidate
    captions; ``image_states`` the caption queries' candidate images and then the image queries'
    states: one forward projects both (one forward per backward, as data parallel requires), and
    ``split_projections`` cuts the result back into queries and lists. ``image_listed`` marks
    the real entries of the image queries' lists (the rest is padding, to be left out).
    """

    def __init__(self, targets: DistillationTargets):
        self.targets = targets

    def __call__(self, items: Sequence[Dict[str, int]]) -> Dict[str, Any]:
        t = self.targets
        kinds = np.array([item["kind"] for item in items])
        index = np.array([item["index"] for item in items], dtype=np.int64)
        captions, images = index[kinds == CAPTION_QUERY], index[kinds == IMAGE_QUERY]
        image_lists = t.image_lists[images]
        caption_rows = np.concatenate([captions, np.maximum(image_lists, 0).ravel()])  # padding reads row 0
        image_rows = np.concatenate([t.caption_lists[captions].ravel(), images])
        return {
            "caption_states": paddle.to_tensor(t.caption_states[caption_rows]),
            "image_states": paddle.to_tensor(t.image_states[image_rows]),
            "caption_teacher": paddle.to_tensor(t.caption_scores[captions]),
            "image_teacher": paddle.to_tensor(t.image_scores[images]),
            "image_listed": paddle.to_tensor(image_lists >= 0),
        }


def split_projections(caption_embeds: paddle.Tensor, image_embeds: paddle.Tensor, batch: Dict[str, Any]) -> List[tuple]:
    """The projected rows of a :class:`FrozenStateCollator` batch cut back into
    ``(query [Q, E], candidates [Q, L, E], teacher [Q, L], listed [Q, L] or None)``: one tuple
    for the caption queries, one for the image queries, each present only when the batch has such."""
    num_captions, num_images = len(batch["caption_teacher"]), len(batch["image_teacher"])
    embed_dim = caption_embeds.shape[-1]
    parts = []
    if num_captions:
        lists = image_embeds[: len(image_embeds) - num_images].reshape([num_captions, -1, embed_dim])
        parts.append((caption_embeds[:num_captions], lists, batch["caption_teacher"], None))
    if num_images:
        lists = caption_embeds[num_captions:].reshape([num_images, -1, embed_dim])
        queries = image_embeds[len(image_embeds) - num_images :]
        parts.append((queries, lists, batch["image_teacher"], batch["image_listed"]))
    return parts


def weight_checksums(model: OscarForImageTextRetrieval) -> Tuple[str, str]:
    """sha256 of the model's weights except the contrastive heads (the encoder and the match head,
    all that pooling and scoring read), and of the contrastive heads alone."""
    teacher, heads = hashlib.sha256(), hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest = heads if name.startswith(HEAD_PREFIXES["contrastive"]) else teacher
        array = tensor.numpy()
        digest.update(f"{name} {array.dtype} {array.shape}".encode("utf-8") + b"\0")
        digest.update(np.ascontiguousarray(array).tobytes())
    return teacher.hexdigest(), heads.hexdigest()


def target_settings(
    model: OscarForImageTextRetrieval, data_dir: str, split: str, gallery: Gallery, candidates: int, mined: int,
    seed: int, processor: OscarProcessor,
) -> TargetSettings:
    """The :class:`TargetSettings` of a run on ``model`` as it will score (paths made absolute so a
    moved cwd does not matter)."""
    teacher, heads = weight_checksums(model)
    return TargetSettings(
        layout=TARGETS_LAYOUT,
        teacher_weights=teacher,
        miner_weights=heads if mined else "",
        data_dir=os.path.abspath(data_dir),
        split=split,
        num_images=gallery.num_images,
        num_captions=gallery.num_captions,
        candidates=candidates,
        mined=mined,
        seed=seed,
        max_seq_len=processor.max_seq_len,
        max_img_seq_len=processor.max_img_seq_len,
    )


def load_or_compute_targets(
    engine: RetrievalEngine, gallery: Gallery, settings: TargetSettings, output_dir: str, start_dir: Optional[str] = None
) -> DistillationTargets:
    """The targets saved in ``output_dir`` (or beside the start model, ``start_dir``) for these
    settings; else computed (reusing saved targets of the random lists when only mined candidates
    are missing) and saved in ``output_dir``.

    Under data parallel every rank takes the same branch (they look after a barrier, and the
    computation is shared out by the engine's scoring and gathered on every rank); rank 0 writes.
    """
    import paddle.distributed as dist

    parallel = dist.get_world_size() > 1
    if parallel:
        dist.barrier()
    path = os.path.join(output_dir, TARGETS_FILE)
    places = [path] + ([os.path.join(start_dir, TARGETS_FILE)] if start_dir else [])
    found, targets = _load_first(places, settings)
    if targets is not None:
        if found != path and dist.get_rank() == 0:  # the run's own copy, for its resumes and continuations
            _link_or_copy(found, path)
    else:
        base = _load_first(places, replace(settings, mined=0, miner_weights=""))[1] if settings.mined else None
        targets = distillation_targets(engine, gallery, settings.candidates, settings.seed, settings.mined, base)
        if dist.get_rank() == 0:
            os.makedirs(output_dir, exist_ok=True)
            targets.save(path, settings)
    if parallel:
        dist.barrier()
    return targets


def _load_first(paths: Sequence[str], settings: TargetSettings) -> Tuple[Optional[str], Optional[DistillationTargets]]:
    """The first of ``paths`` holding targets of these settings, and those targets."""
    for path in paths:
        targets = DistillationTargets.load(path, settings)
        if targets is not None:
            logger.info(f"Distillation targets: reusing {path}")
            return path, targets
    return None, None


def _link_or_copy(source: str, path: str) -> None:
    """``path`` becomes the file ``source`` (a hard link where the file system allows), atomically."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = f"{path}.partial.npz"
    if os.path.exists(partial):
        os.remove(partial)
    try:
        os.link(source, partial)
    except OSError:
        shutil.copyfile(source, partial)
    os.replace(partial, path)
