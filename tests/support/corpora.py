"""An in-memory corpus for the training unit tests: a few images with made-up captions, tags and
random region features, behind the RetrievalCorpus interface."""
import numpy as np

FEATURE_DIM = 12


class ListCorpus:
    """A small in-memory corpus with the RetrievalCorpus interface."""

    def __init__(self, num_images: int, captions_per_image: int = 3, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.image_ids = [f"img{i}" for i in range(num_images)]
        self.captions = [[f"image {i} caption {j}" for j in range(captions_per_image)] for i in range(num_images)]
        self.tags = [[f"tag{i}", "thing"] for i in range(num_images)]
        self._features = [rng.normal(size=(2 + i % 3, FEATURE_DIM)).astype(np.float32) for i in range(num_images)]

    def __len__(self) -> int:
        return len(self.image_ids)

    def features(self, i: int) -> np.ndarray:
        return self._features[i]
