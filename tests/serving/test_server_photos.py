"""Photos through the service, started for real (`vinvl serve` in a subprocess on a free 127.0.0.1 port):
an uploaded photo (``{"photo": base64}``) is answered as the in-process Taskflow answers the same
photo file; a string is always a caption, even the path of a JPEG on the server; bad uploads get
400 naming the fault; a server without a detector names the flag; and a photo gallery (`vinvl
extract` then `vinvl index build`) is served for caption queries. Model and detector are the tiny
configs with seeded random weights (the tests are about plumbing; different photos still get
different scores, which is checked so a mix-up would show). The detector runs in two processes,
whose kernels may round differently, so scores are compared up to float32 rounding."""
import base64
import io
import os
import shutil
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

import vinvl  # noqa: F401  (registers the task)
from paddlenlp import Taskflow

from vinvl.commands.cli import main as cli_main
from vinvl.data import load_corpus, write_synthetic_corpus
from vinvl.errors import UserError
from vinvl.index import GallerySource, build_index
from vinvl.serving.client import ServerProcess, free_port, get_json, post_json, vinvl_serve_command
from vinvl.commands.serve import main as serve_main
from vinvl.precision import cpu_flags

from support.commands import assert_user_error, vinvl_here
from support.paths import PHOTO_DIR, TINY_DETECTOR as DETECTOR, TINY_MODEL
from support.precision import refuse_missing_instructions, skip_unless_supported
from support.realdata import GALLERY_PHOTOS, OTHER_PHOTO, QUERY_PHOTO
from support.tinymodel import derive

TOP_K = 3
OPTIONS = dict(top_k=TOP_K, first_stage="exhaustive")
SERVE_FLAGS = ["--top_k", str(TOP_K), "--first_stage", "exhaustive"]
TIMEOUT = 120.0
needs_bf16 = pytest.mark.skipif(not {"avx512_bf16", "amx_bf16"} & cpu_flags(), reason="this CPU has no bf16 instructions")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("serving_photos")


@pytest.fixture(scope="module")
def model_dir(root):
    """The tiny config with random weights, saved once so every process loads the same weights."""
    return derive(TINY_MODEL, str(root / "model"), trained_heads=[])


@pytest.fixture(scope="module")
def captioned(root, model_dir):
    """(index, corpus): an index of six synthetic images with captions, served with the detector."""
    corpus = write_synthetic_corpus(str(root / "corpus"), {"test": 6}, seed=3)
    index = str(root / "captioned_index")
    build_index(index, model_dir, [GallerySource(corpus, "test")], progress=False)
    port = free_port()
    command = vinvl_serve_command(index, port, extra=[*SERVE_FLAGS, "--detector", DETECTOR])
    with ServerProcess(command, port, str(root / "captioned.log")) as server:
        yield server, index, corpus


@pytest.fixture(scope="module")
def photo_gallery(root, model_dir):
    """(server, index, photo folder): `vinvl extract` of three photos, `vinvl index build` over the
    extraction (a gallery without captions), served without a detector."""
    folder = root / "photos"
    folder.mkdir()
    for name in GALLERY_PHOTOS:
        shutil.copy(os.path.join(PHOTO_DIR, name), folder / name)
    extracted, index = str(root / "extracted"), str(root / "photo_index")
    assert cli_main(["extract", str(folder), extracted, "--detector", DETECTOR, "--no_progress"]) == 0
    assert cli_main(["index", "build", "--model_dir", model_dir, "--gallery_dir", extracted, index]) == 0
    port = free_port()
    with ServerProcess(vinvl_serve_command(index, port, extra=SERVE_FLAGS), port, str(root / "photo.log")) as server:
        yield server, index, str(folder)


def upload(path_or_bytes):
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else open(path_or_bytes, "rb").read()
    return base64.b64encode(data).decode("ascii")


def ask(port, data):
    status, answer = post_json(port, {"data": data}, timeout=TIMEOUT)
    assert status == 200, answer
    return answer["result"]


def assert_same_up_to_rounding(got, want):
    """Same answers (ids, captions, order); scores and margins up to float32 rounding."""
    assert len(got) == len(want)
    for one, other in zip(got, want):
        assert one.keys() == other.keys()
        results = "captions" if "captions" in one else "images" if "images" in one else None
        if results is None:  # a pair score
            assert (one["image_id"], one["caption"]) == (other["image_id"], other["caption"])
            pairs = [(one, other)]
        else:
            assert {k: v for k, v in one.items() if k != results} == {k: v for k, v in other.items() if k != results}
            strip = lambda items: [{k: v for k, v in r.items() if k not in ("score", "margin")} for r in items]  # noqa: E731
            assert strip(one[results]) == strip(other[results])
            pairs = list(zip(one[results], other[results]))
        for a, b in pairs:
            np.testing.assert_allclose([a["score"], a["margin"]], [b["score"], b["margin"]], rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_an_uploaded_photo_is_answered_as_the_taskflow_answers_the_file(captioned, model_dir):
    server, index, corpus = captioned
    flow = Taskflow("image_text_retrieval", task_path=model_dir, index_path=index, detector_path=DETECTOR, **OPTIONS)
    expected = flow(QUERY_PHOTO)
    assert expected[0]["image_id"] is None and len(expected[0]["captions"]) == TOP_K
    assert_same_up_to_rounding(ask(server.port, {"photo": upload(QUERY_PHOTO)}), expected)
    # the same pixels as PNG bytes: the same answer
    with Image.open(QUERY_PHOTO) as image:
        png = io.BytesIO()
        image.save(png, format="PNG")
    assert_same_up_to_rounding(ask(server.port, {"photo": upload(png.getvalue())}), expected)
    # a pair score, and a photo in a list with a caption
    caption = load_corpus(corpus, "test").captions[2][0]
    assert_same_up_to_rounding(
        ask(server.port, {"photo": upload(QUERY_PHOTO), "caption": caption}), flow({"image": QUERY_PHOTO, "caption": caption})
    )
    mixed = ask(server.port, [caption, {"photo": upload(OTHER_PHOTO)}])
    assert_same_up_to_rounding(mixed, flow([caption, OTHER_PHOTO]))
    assert mixed[1]["captions"] != ask(server.port, {"photo": upload(QUERY_PHOTO)})[0]["captions"]  # photos differ


def test_a_string_is_always_a_caption_never_a_file_on_the_server(captioned, model_dir):
    """In-process a string ending in .jpg is a photo path; over HTTP it is a caption, even when it
    names an existing JPEG on the server, and ``{"image": path}`` is refused."""
    server, index, _ = captioned
    answer = ask(server.port, QUERY_PHOTO)[0]
    assert answer["caption"] == QUERY_PHOTO and "captions" not in answer
    # the in-process answer for the same text as a caption (a trailing newline keeps it one there)
    flow = Taskflow("image_text_retrieval", task_path=model_dir, index_path=index, **OPTIONS)
    assert_same_up_to_rounding([answer], [{**flow(QUERY_PHOTO + "\n")[0], "caption": QUERY_PHOTO}])
    pair = ask(server.port, {"image_id": load_corpus(captioned[2], "test").image_ids[0], "caption": QUERY_PHOTO})[0]
    assert pair["caption"] == QUERY_PHOTO
    for data in ({"image": QUERY_PHOTO}, [{"image": QUERY_PHOTO, "caption": "a dog"}]):
        status, refused = post_json(server.port, {"data": data}, timeout=TIMEOUT)
        assert status == 400 and "'image' is not accepted" in refused["detail"] and '"photo"' in refused["detail"], refused


def huge_png(side: int) -> bytes:
    """A PNG whose header says ``side`` x ``side`` pixels, with almost no pixel data."""
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_bad_uploads_get_400_naming_the_fault_and_the_server_goes_on(captioned):
    server, _, corpus = captioned
    jpeg = open(QUERY_PHOTO, "rb").read()
    cases = [
        ("not base64", {"photo": "this is not base64!"}, ["query 0", "'photo' is not base64"]),
        ("not an image", {"photo": upload(b"just some text, not an image")}, ["not an image"]),
        ("truncated", {"photo": upload(jpeg[: len(jpeg) // 3])}, ["truncated or corrupt"]),
        ("too many pixels", {"photo": upload(huge_png(10000))}, ["10000x10000 is 100.0 megapixels", "decompression-bomb"]),
        ("far too many pixels", {"photo": upload(huge_png(20000))}, ["400000000 pixels", "decompression-bomb"]),
        ("not a string", {"photo": 123}, ["'photo' must be a base64 string"]),
        ("photo and image_id", {"photo": upload(jpeg), "image_id": "x"}, ["'photo' or ['image_id']"]),
        ("unknown key", {"photo": upload(jpeg), "colour": "red"}, ["unknown keys ['colour']"]),
        ("second of two", ["a dog", {"photo": upload(b"GIF89a")}], ["query 1"]),
    ]
    good = load_corpus(corpus, "test").captions[0][0]
    expected = ask(server.port, good)
    for name, data, words in cases:
        status, answer = post_json(server.port, {"data": data}, timeout=TIMEOUT)
        assert status == 400, (name, status, answer)
        for word in words:
            assert word in answer["detail"], (name, word, answer)
        assert ask(server.port, good) == expected, name


def test_without_a_detector_a_photo_gets_400_naming_the_flag(photo_gallery):
    server, _, _ = photo_gallery
    status, answer = post_json(server.port, {"data": {"photo": upload(QUERY_PHOTO), "caption": "a dog"}}, timeout=TIMEOUT)
    assert status == 400 and "needs a detector" in answer["detail"], answer
    assert "--detector" in answer["detail"] and "VINVL_SERVE_DETECTOR" in answer["detail"]


def test_without_allow_add_an_add_request_gets_403_and_nothing_is_read(photo_gallery):
    server, _, folder = photo_gallery
    _, before = get_json(server.port)
    status, answer = post_json(server.port, {"data": {"add": {"gallery_dir": str(folder)}}}, timeout=TIMEOUT)
    assert status == 403 and "--allow_add" in answer["detail"] and "VINVL_SERVE_ALLOW_ADD" in answer["detail"], answer
    _, after = get_json(server.port)
    assert after["index"] == before["index"]


def test_vinvl_serve_refuses_a_detector_path_that_is_not_one(photo_gallery):
    _, index, folder = photo_gallery
    with pytest.raises(UserError, match="is not a detector directory: it has no config.json"):
        serve_main(["--index", index, "--detector", folder, "--port", str(free_port())])


def test_a_photo_gallery_index_answers_caption_queries(photo_gallery, model_dir):
    """`vinvl extract` + `vinvl index build` + `vinvl serve`: caption -> photos, as in-process over
    the same index and as a Taskflow over the photo folder itself (``gallery_images=``)."""
    server, index, folder = photo_gallery
    captions = ["a dog sitting on a couch", "two people riding horses on a beach"]
    got = ask(server.port, captions)
    assert {r["image_id"] for a in got for r in a["images"]} <= {os.path.splitext(n)[0] for n in GALLERY_PHOTOS}
    in_process = Taskflow("image_text_retrieval", task_path=model_dir, index_path=index, **OPTIONS)
    assert_same_up_to_rounding(got, in_process(captions))
    from_folder = Taskflow(
        "image_text_retrieval", task_path=model_dir, detector_path=DETECTOR, gallery_images=folder,
        gallery_cache_dir=os.path.join(os.path.dirname(index), "cache"), **OPTIONS,
    )
    assert_same_up_to_rounding(got, from_folder(captions))


# ----- --detector_precision -------------------------------------------------------------------------


def caption_margins(answers):
    return np.array([c["margin"] for c in answers[0]["captions"]])


@needs_bf16
@pytest.mark.slow
def test_detector_precision_bf16_answers_an_upload_as_the_bf16_taskflow(root, model_dir, captioned):
    """`vinvl serve --detector_precision bf16`: health names it, and an uploaded photo is answered as
    the in-process Taskflow with the bf16 detector answers the file, measurably apart from the
    fp32 detector's server (so a server that ignored the flag would fail)."""
    fp32_server, index, _ = captioned
    port = free_port()
    command = vinvl_serve_command(index, port, extra=[*SERVE_FLAGS, "--detector", DETECTOR, "--detector_precision", "bf16"])
    with ServerProcess(command, port, str(root / "bf16.log")):
        status, health = get_json(port)
        assert status == 200 and health["detector_precision"] == "bf16"
        served = ask(port, {"photo": upload(QUERY_PHOTO)})
    assert len(served[0]["captions"]) == TOP_K
    flow = Taskflow("image_text_retrieval", task_path=model_dir, index_path=index, detector_path=DETECTOR,
                    detector_precision="bf16", **OPTIONS)
    assert_same_up_to_rounding(served, flow(QUERY_PHOTO))
    assert get_json(fp32_server.port)[1]["detector_precision"] == "fp32"
    fp32 = ask(fp32_server.port, {"photo": upload(QUERY_PHOTO)})
    assert not np.allclose(caption_margins(served), caption_margins(fp32), rtol=1e-6, atol=0)


def test_vinvl_serve_refuses_a_detector_precision_before_taking_the_port(photo_gallery, capfd, tmp_path, monkeypatch):
    _, index, _ = photo_gallery
    refuse_missing_instructions(monkeypatch)
    monkeypatch.setattr("vinvl.commands.serve._tcp_socket", lambda *a: pytest.fail("the port was taken"))
    serve = ["serve", "--index", index, "--port", str(free_port())]
    done = vinvl_here(capfd, tmp_path, *serve, "--detector", DETECTOR, "--detector_precision", "bf16")
    assert_user_error(done, "vinvl serve", "--detector_precision bf16: precision 'bf16' needs a CPU with one of the "
                      "instructions amx_bf16, avx512_bf16")
    done = vinvl_here(capfd, tmp_path, *serve, "--detector_precision", "bf16")
    assert_user_error(done, "vinvl serve", "--detector_precision bf16 is the precision of --detector, and none is given")


def test_vinvl_serve_refuses_an_int8_detector_without_a_calibration_before_serving(photo_gallery, capfd, tmp_path, monkeypatch):
    skip_unless_supported("int8")
    _, index, _ = photo_gallery
    monkeypatch.setattr("vinvl.commands.serve._run", lambda *a: pytest.fail("the server was started"))
    done = vinvl_here(capfd, tmp_path, "serve", "--index", index, "--port", str(free_port()), "--detector", DETECTOR,
                      "--detector_precision", "int8")
    assert_user_error(done, "vinvl serve", "has no int8 calibration", "vinvl calibrate-detector PHOTOS --detector")
