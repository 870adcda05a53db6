"""The RSS-over-extraction measurement of scripts/benchmark_detector.py --extract_memory: the photo
folder it builds, the report it reads off the samples, and one real `vinvl extract` run sampled
from outside, and the journal count on an extraction stopped midway (tiny detector, a few photos)."""
import os

import pytest

from support.paths import PHOTO_DIR, TINY_DETECTOR as TINY
from vinvl.benchmarks.detector import _committed_rows, photo_folder, rss_report, sample_extraction_rss
from vinvl.commands.benchmark_detector import main
from vinvl.vision.detector import VinVLDetector
from vinvl.vision.extract import PREDICTIONS_FILE, extract

PHOTOS = [os.path.join(PHOTO_DIR, name) for name in ("COCO_val2014_000000045057.jpg", "COCO_val2014_000000317441.jpg")]
MB = 2**20


def test_photo_folder_links_count_photos_under_distinct_names(tmp_path):
    folder = photo_folder(PHOTOS, 5, str(tmp_path / "photos"))
    names = sorted(os.listdir(folder))
    assert names == [f"photo{i:06d}.jpg" for i in range(5)]
    targets = [os.path.realpath(os.path.join(folder, n)) for n in names]
    assert targets == [os.path.realpath(PHOTOS[i % 2]) for i in range(5)]


def test_rss_report_reads_each_checkpoint_off_the_first_sample_that_reached_it():
    # (seconds, rows committed, RSS): loading peaks at 900 MB, then 500-520 MB, the merge 530 MB.
    samples = [(0.0, 0, 100 * MB), (1.0, 0, 900 * MB), (2.0, 1, 500 * MB), (3.0, 7, 510 * MB),
               (4.0, 12, 520 * MB), (5.0, 100, 505 * MB), (6.0, 120, 530 * MB)]
    lines = rss_report(samples, 950 * MB, 120)
    assert lines[1:7] == ["1 | 500 | 900 | 2", "10 | 520 | 900 | 4", "25 | 505 | 900 | 5", "50 | 505 | 900 | 5",
                          "100 | 505 | 900 | 5", "120 | 530 | 900 | 6"]
    assert lines[7].startswith("peak RSS while extracting 900 MB, during the merge 530 MB; the process's peak (OS accounting) 950 MB")
    missing = rss_report([(0.0, 0, MB), (1.0, 3, MB)], MB, 5)
    assert missing[1:3] == ["1 | 1 | 1 | 1", "5 | not sampled | | "]  # never seen at 5 rows: said, not guessed


class StopAfter:
    """The real detector, failing on its call number ``calls + 1`` (an extraction stopped midway)."""

    def __init__(self, detector, calls):
        self.detector, self.calls = detector, calls

    def detect(self, images):
        if self.calls == 0:
            raise KeyboardInterrupt
        self.calls -= 1
        return self.detector.detect(images)


def test_committed_rows_counts_the_rows_an_unfinished_extraction_journalled(tmp_path):
    folder = photo_folder(PHOTOS, 4, str(tmp_path / "photos"))
    out = str(tmp_path / "out")
    assert _committed_rows(out) == 0
    with pytest.raises(KeyboardInterrupt):
        extract(folder, out, TINY, detector=StopAfter(VinVLDetector.from_pretrained(TINY), 2), progress=False)
    assert _committed_rows(out) == 2


@pytest.mark.slow
def test_sample_extraction_rss_follows_a_real_extraction(tmp_path):
    folder = photo_folder(PHOTOS, 3, str(tmp_path / "photos"))
    out = tmp_path / "out"
    samples, peak = sample_extraction_rss(folder, str(out), TINY)
    with open(out / PREDICTIONS_FILE) as handle:
        assert len(handle.readlines()) == 3  # the extraction itself ran to the end
    rows = [r for _, r, _ in samples]
    # Rows as committed (how many were seen depends on the 50 ms sampling on a busy machine).
    assert rows == sorted(rows) and rows[-1] <= 3
    assert max(rss for _, _, rss in samples) > 50 * MB  # a paddle process, not the launcher
    assert peak >= max(rss for _, _, rss in samples)  # the OS peak bounds every sample


def test_extract_memory_arguments_are_checked(capsys):
    with pytest.raises(SystemExit) as zero:
        main(["--extract_memory", "0", "--detector", TINY, PHOTOS[0]])
    assert zero.value.code == 2 and "--extract_memory must be at least 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--extract_memory", "3", PHOTOS[0]])
    assert "--extract_memory needs --detector" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--extract_memory", "3", "--detector", TINY, "nowhere.jpg"])
    assert "no such image file: nowhere.jpg" in capsys.readouterr().err
