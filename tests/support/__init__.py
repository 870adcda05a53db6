"""Helpers shared by the test modules (importable as ``support``: pytest.ini puts tests/ on the path).

Test modules import from here, never from each other: paths (where the fixture data and the tiny
configs are), realdata (COCO photos and captions), tinymodel (the session-trained tiny model and
its derived checkpoints), commands (running ``vinvl`` as a user does), official_oscar (a PyTorch
reference of the official Oscar checkpoint layout), images (photo files, good and bad) and
corpora (an in-memory corpus)."""
