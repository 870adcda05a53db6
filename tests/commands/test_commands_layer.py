"""The commands layer (vinvl/commands): help without paddle, help texts, and the command-line fixes
of issue 25 (extract retries, serve's port, one name per option meaning, messages).

Subprocess tests run the real entry points through a tiny driver that also reports which heavy
modules the process imported; the others call ``vinvl.commands.cli.main`` in this process.
Tiny configs only: model_configs/tiny (random weights, saved once) and model_configs/vinvl-detector-tiny.
"""
import argparse
import importlib
import json
import os
import pkgutil
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest

import vinvl.commands
from vinvl.commands.cli import COMMANDS
from vinvl.errors import USER_ERROR_STATUS

from support.commands import vinvl_here
from support.paths import PHOTO_DIR, REPO, TINY_DETECTOR
from support.paths import TINY_MODEL as TINY_CONFIG
from support.realdata import GALLERY_PHOTOS
from support.tinymodel import derive

# Command modules with a parser that scripts/ run but `vinvl` does not list (every other module of
# vinvl.commands but the dispatcher and the shared options).
SCRIPT_COMMANDS = tuple(sorted(
    module.name for module in pkgutil.iter_modules(vinvl.commands.__path__)
    if f"vinvl.commands.{module.name}" not in {entry for entry, _ in COMMANDS.values()}
    and module.name not in ("cli", "options")
))
HEAVY = ("paddle", "paddlenlp", "numpy")

# Runs each argv through vinvl's entry point (a script module's main when it names one) and prints
# {argv: [heavy modules imported so far], ...} as JSON on its last line.
DRIVER = textwrap.dedent("""
    import contextlib, importlib, io, json, sys
    from vinvl.commands.cli import main, run_main
    seen = {}
    for argv in json.loads(sys.argv[1]):
        with contextlib.redirect_stdout(io.StringIO()):
            if argv[0].startswith("script:"):
                module = importlib.import_module("vinvl.commands." + argv[0][len("script:"):])
                status = run_main(module.main, argv[1:], prog=argv[0])
            else:
                status = main(argv)
        seen[" ".join(argv)] = [status, [name for name in %r if name in sys.modules]]
    print(json.dumps(seen))
""" % (HEAVY,))


def _status_out_err(capfd, cwd, *args):
    """(status, stdout, stderr) of :func:`support.commands.vinvl_here`."""
    done = vinvl_here(capfd, cwd, *args)
    return done.returncode, done.stdout, done.stderr


def run_driver(argvs, cwd):
    environment = dict(os.environ, PYTHONPATH=REPO)
    environment.pop("VINVL_DEBUG", None)
    done = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(argvs)], cwd=str(cwd), env=environment,
                          capture_output=True, text=True, timeout=600)
    assert done.stdout.strip(), done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def one_error_line(err, prog):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), err
    return lines[0]


# ----- A: start-up without paddle ------------------------------------------------------------------


def test_import_vinvl_help_every_command_help_and_a_mistyped_command_import_no_paddle(tmp_path):
    commands = [name for name in COMMANDS if name != "train"]  # train's parser is the Trainer's (another module)
    argvs = [["--help"], ["fly"]] + [[name, "--help"] for name in commands] + [["index", "build", "--help"]]
    argvs += [[f"script:{name}", "--help"] for name in SCRIPT_COMMANDS]
    seen, stderr = run_driver(argvs, tmp_path)
    assert seen["fly"][0] == USER_ERROR_STATUS and "unknown command 'fly'" in stderr
    for argv, (status, heavy) in seen.items():
        assert heavy == [], f"{argv} imported {heavy}"
        assert status == (USER_ERROR_STATUS if argv == "fly" else 0), argv


@pytest.mark.slow
def test_taskflow_is_registered_whichever_is_imported_first(tmp_path):
    model_dir = derive(TINY_CONFIG, str(tmp_path / "model"), trained_heads=[])
    ask = textwrap.dedent(f"""
        import numpy as np
        rng = np.random.default_rng(0)
        gallery = {{"image_ids": ["a", "b"], "features": [rng.random((3, 2054), dtype=np.float32) for _ in range(2)],
                    "tags": [["dog"], ["cat"]], "captions": [["a dog"], ["a cat"]]}}
        task = Taskflow("image_text_retrieval", task_path={model_dir!r}, gallery=gallery, top_k=2, first_stage="exhaustive")
        print(sorted(r["image_id"] for r in task("a dog")[0]["images"]))
    """)
    orders = {
        "vinvl first": "import vinvl\nfrom paddlenlp import Taskflow\n",
        "paddlenlp first": "from paddlenlp import Taskflow\nimport vinvl\n",
        "a vinvl module imports paddlenlp": "import vinvl.oscar\nfrom paddlenlp import Taskflow\n",
    }
    for order, imports in orders.items():
        done = subprocess.run([sys.executable, "-c", imports + ask], cwd=str(tmp_path), capture_output=True, text=True,
                              env=dict(os.environ, PYTHONPATH=REPO), timeout=600)
        assert done.returncode == 0, (order, done.stderr[-3000:])
        assert done.stdout.strip().splitlines()[-1] == "['a', 'b']", (order, done.stdout)


def test_the_command_line_spells_the_librarys_names():
    from vinvl.apps.demo import SIZES
    from vinvl.commands import demo, evaluate, options, serve
    from vinvl.data.layout import SPLITS
    from vinvl.precision import PRECISIONS
    from vinvl.retrieval.evaluate import PROTOCOLS
    from vinvl.retrieval.first_stage import FIRST_STAGE_CHOICES
    from vinvl.serving.server import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_QUERIES

    assert options.SPLITS == SPLITS and options.FIRST_STAGE_CHOICES == FIRST_STAGE_CHOICES
    assert options.PRECISIONS == PRECISIONS
    assert evaluate.PROTOCOLS == PROTOCOLS and demo.SIZES == tuple(SIZES)
    assert (serve.MAX_BODY_BYTES, serve.MAX_QUERIES) == (DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_QUERIES)


# ----- B7: help texts -----------------------------------------------------------------------------


def _parsers():
    """(name, parser) of every command but train, sub-commands' parsers included."""
    modules = [(name, COMMANDS[name][0]) for name in COMMANDS if name != "train"]
    modules += [(name, f"vinvl.commands.{name}") for name in SCRIPT_COMMANDS]
    for name, module in modules:
        parser = importlib.import_module(module).build_parser()
        yield name, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                yield from ((f"{name} {sub}", subparser) for sub, subparser in action.choices.items())


@pytest.mark.parametrize("name, parser", list(_parsers()), ids=lambda value: value if isinstance(value, str) else "")
def test_help_names_the_command_documents_every_option_and_shows_defaults(name, parser):
    text = parser.format_help()
    if name.split()[0] not in SCRIPT_COMMANDS:
        assert text.startswith(f"usage: vinvl {name} ")
    assert "``" not in text and ":func:" not in text and ":mod:" not in text, text  # plain text, no reST
    options = text[text.index("\noptions:\n"):]  # the option entries, after the usage line and the description
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        flag = action.option_strings[-1]
        assert action.help, f"{name} {flag} has no help"
        if action.default is not None and action.default is not False and action.default not in ("", [], ()):
            # this option's entry: from its invocation ("  --split SPLIT") to the next option's, on one line
            entry = options[options.index("\n  " + formatter._format_action_invocation(action)):]
            entry = " ".join(entry[1:].split("\n  -")[0].split())
            assert "(default: " in entry, f"{name} {flag}: its default {action.default!r} is not shown: {entry}"
        else:
            assert "(default: )" not in options, f"{name}: an empty default is shown"


def test_eval_shows_its_candidates_default():
    text = importlib.import_module("vinvl.commands.evaluate").build_parser().format_help()
    assert "(default: 128)" in " ".join(text.split())


# ----- B5: one name per meaning ---------------------------------------------------------------------


@pytest.mark.parametrize("command", [["eval", "--model_dir", "m", "--data_dir", "d"], ["benchmark"]])
def test_top_k_where_it_meant_candidates_is_refused_naming_candidates(command, tmp_path, capfd):
    status, _, err = _status_out_err(capfd, tmp_path, *command, "--top_k", "8")
    assert status == USER_ERROR_STATUS
    line = one_error_line(err, f"vinvl {command[0]}")
    assert "--top_k" in line and "--candidates" in line


# ----- B1: extract retries -------------------------------------------------------------------------


@pytest.fixture()
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in GALLERY_PHOTOS[:2]:
        shutil.copy(os.path.join(PHOTO_DIR, name), folder / name)
    return folder


@pytest.mark.slow
def test_a_failed_extract_does_not_block_its_retry(photos, tmp_path, capfd):
    (photos / "empty.jpg").write_bytes(b"")
    command = ["extract", str(photos), "out", "--detector", TINY_DETECTOR, "--fail_on_bad", "--no_progress"]
    status, _, err = _status_out_err(capfd, tmp_path, *command)
    assert status == USER_ERROR_STATUS
    note, line = err.strip().splitlines()  # the tiny detector's random-weights notice, then the error
    assert "random weights" in note and line.startswith("vinvl extract: error: "), err
    assert str(photos / "empty.jpg") in line and "the file is empty" in line
    assert not (tmp_path / "out").exists()  # the run committed nothing: nothing is left to resume
    os.remove(photos / "empty.jpg")
    status, out, err = _status_out_err(capfd, tmp_path, *command)
    assert status == 0, err
    assert "extracted 2 of 2 images" in out
    # the tiny detector has no weights: said in one line
    assert [line for line in err.splitlines() if "random weights" in line] == [line for line in err.splitlines() if line]


def test_an_empty_detector_folder_leaves_nothing_behind(photos, tmp_path, capfd):
    (tmp_path / "no_detector").mkdir()
    status, _, err = _status_out_err(capfd, tmp_path, "extract", str(photos), "out", "--detector", "no_detector", "--no_progress")
    assert status == USER_ERROR_STATUS
    assert "no_detector" in one_error_line(err, "vinvl extract")
    assert not (tmp_path / "out").exists()
    status, out, err = _status_out_err(capfd, tmp_path, "extract", str(photos), "out", "--detector", TINY_DETECTOR, "--no_progress")
    assert status == 0 and "extracted 2 of 2 images" in out, err


def test_an_unfinished_extraction_of_other_images_says_how_to_start_over(photos, tmp_path, capfd):
    work = tmp_path / "out" / ".extract"
    work.mkdir(parents=True)
    (work / "run.json").write_text(json.dumps({"images": "elsewhere", "num_listed": 7}))
    command = ["extract", str(photos), "out", "--detector", TINY_DETECTOR, "--no_progress"]
    status, _, err = _status_out_err(capfd, tmp_path, *command)
    assert status == USER_ERROR_STATUS
    line = err.strip().splitlines()[-1]
    assert "unfinished extraction of other images" in line and "--restart" in line
    status, out, err = _status_out_err(capfd, tmp_path, *command, "--restart")
    assert status == 0 and "extracted 2 of 2 images" in out, err
    assert not work.exists()


# ----- B4: serve on a port in use ------------------------------------------------------------------


def test_serve_on_a_port_in_use_is_one_line_before_anything_loads(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        argv = ["serve", "--index", "no_index", "--host", "127.0.0.1", "--port", str(port)]
        seen, stderr = run_driver([argv], tmp_path)
    status, heavy = seen[" ".join(argv)]
    assert status == USER_ERROR_STATUS and heavy == []
    line = one_error_line(stderr, "vinvl serve")
    assert f"--port {port}" in line and "address already in use" in line


# ----- B9: messages --------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [
    ["retrieve", "--model_dir", "nowhere", "--data_dir", ".", "--text", "a dog"],
    ["index", "build", "--model_dir", "nowhere", "--gallery_dir", ".", "out"],
    ["serve", "--index", ".", "--model_dir", "nowhere"],
], ids=lambda command: " ".join(command[:2]))
def test_a_model_directory_that_does_not_exist_is_called_so(command, tmp_path, capfd):
    status, _, err = _status_out_err(capfd, tmp_path, *command)
    assert status == USER_ERROR_STATUS
    prog = "vinvl index build" if command[0] == "index" else f"vinvl {command[0]}"
    line = one_error_line(err, prog)
    assert "nowhere" in line and "no such" in line and "config.json" not in line and "weights" not in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("load", ["load_retrieval_model", "weights_checksum"])
def test_the_library_says_a_model_directory_does_not_exist(load, tmp_path):
    from vinvl.oscar import model_dir

    with pytest.raises(FileNotFoundError, match="no such") as refused:
        getattr(model_dir, load)(str(tmp_path / "nowhere"))
    assert "config.json" not in str(refused.value) and "weights" not in str(refused.value)


def test_retrieving_captions_from_a_gallery_without_captions_names_the_option(tmp_path, capfd):
    from vinvl.data import write_synthetic_corpus

    gallery = write_synthetic_corpus(str(tmp_path / "gallery"), {"train": 0, "minival": 0, "val": 0, "test": 2},
                                     layout="detector")
    os.remove(os.path.join(gallery, "test_captions.pt"))  # what `vinvl extract` writes: no captions
    status, _, err = _status_out_err(capfd, tmp_path, "retrieve", "--model_dir", TINY_CONFIG, "--data_dir", "gallery",
                              "--image_id", "x")
    assert status == USER_ERROR_STATUS
    line = one_error_line(err, "vinvl retrieve")
    assert "--data_dir" in line and "captions" in line


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    return derive(TINY_CONFIG, str(tmp_path_factory.mktemp("saved") / "model"), trained_heads=[])


def test_index_build_refuses_a_folder_it_did_not_write_and_names_its_sub_command(saved_model, tmp_path, capfd):
    from vinvl.data import write_synthetic_corpus

    write_synthetic_corpus(str(tmp_path / "gallery"), {"train": 0, "minival": 0, "val": 0, "test": 3})
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("my notes\n")
    build = ["index", "build", "--model_dir", saved_model, "--gallery_dir", "gallery"]
    status, _, err = _status_out_err(capfd, tmp_path, *build, "mine")
    assert status == USER_ERROR_STATUS
    assert "not a gallery index" in one_error_line(err, "vinvl index build")
    assert sorted(os.listdir(tmp_path / "mine")) == ["notes.txt"]
    status, _, err = _status_out_err(capfd, tmp_path, *build, "--batch_size", "0", "new")
    assert status == USER_ERROR_STATUS and "--batch_size" in one_error_line(err, "vinvl index build")
    status, _, err = _status_out_err(capfd, tmp_path, *build, "new")
    assert status == 0, err
    status, _, err = _status_out_err(capfd, tmp_path, *build, "new")  # an index it wrote is replaced
    assert status == 0, err


@pytest.mark.slow
def test_skipped_gallery_photos_are_one_clean_line(saved_model, photos, tmp_path):
    (photos / "empty.jpg").write_bytes(b"")
    command = [sys.executable, "-m", "vinvl.commands.cli", "retrieve", "--model_dir", saved_model, "--gallery_images",
               str(photos), "--detector", TINY_DETECTOR, "--gallery_cache_dir", str(tmp_path / "cache"), "--text", "a dog"]
    done = subprocess.run(command, cwd=str(tmp_path), capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=REPO))
    assert done.returncode == 0, done.stderr
    assert "UserWarning" not in done.stderr and "warnings.warn" not in done.stderr, done.stderr
    # extraction names the file as it skips it; the gallery's notice says where all of them are listed
    notices = [line for line in done.stderr.splitlines() if "photo skipped" in line]  # one: singular
    assert len(notices) == 1 and notices[0].startswith("gallery_images=") and "bad_images.jsonl" in notices[0], done.stderr
    assert "empty.jpg: the file is empty" in notices[0], notices
    assert len(json.loads(done.stdout)[0]["images"]) == 2  # stdout is the answer alone
