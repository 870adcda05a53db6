"""The README flow as a new user runs it, from a working directory of their own with relative paths:
`vinvl demo` twice in a row, then `vinvl eval` with each protocol and `vinvl retrieve` on its output.
The demo runs twice once for the whole module; every other test reuses its output.

Both runs are the `vinvl` entry point (vinvl.commands.cli.main in a fresh interpreter, argv as a user types
it: ``demo --size ci ...``) with the sizes behind ``ci`` set here (see demo_command). What these tests
check is the flow, the files, the report's parts and the agreement between protocols, never how well
the demo's model ranks, so the sizes have no role in it: the first run, which only has to leave a
folder the demo wrote for the second to replace, is smaller still.
"""
import json
import os
import re
import sys

import pytest

from support.commands import assert_quiet, assert_user_error, run, vinvl_cmd

pytestmark = pytest.mark.slow  # every test here runs the demo (a subprocess training a model)

NAMES = ("t2i_r1", "t2i_r5", "t2i_r10", "i2t_r1", "i2t_r5", "i2t_r10", "rsum")
# (train images, test images, steps) behind --size ci. The first run logs steps 6 ... 30, past the
# second run's first logged step: records of the first run left in the model directory would show in
# the second run's log history as steps out of order. The second run has 20 test images (folds of 4
# for the 1K protocol) and 60 steps: a loss curve of 6 logged points and 5 evaluations for the report.
FIRST_RUN, SECOND_RUN = (16, 10, 30), (160, 20, 60)
TEST_IMAGES = SECOND_RUN[1]


def demo_command(sizes, *arguments):
    """``vinvl <arguments>`` in a new interpreter, with ``sizes`` behind ``vinvl demo --size ci``."""
    code = f"import sys, vinvl.commands.cli, vinvl.apps.demo; vinvl.apps.demo.SIZES['ci'] = {tuple(sizes)!r}; sys.exit(vinvl.commands.cli.main())"
    return [sys.executable, "-c", code, *arguments]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Two runs of ``vinvl demo --size ci --work_dir demo`` in a row, a file of the user's put in between."""
    cwd = tmp_path_factory.mktemp("user")
    arguments = ["demo", "--size", "ci", "--work_dir", "demo", "--seed", "1"]
    first = run(demo_command(FIRST_RUN, *arguments), cwd)
    assert first.returncode == 0, first.stderr[-3000:]
    first_report = (cwd / "demo" / "report.html").stat().st_mtime_ns
    (cwd / "demo" / "notes.txt").write_text("mine")
    second = run(demo_command(SECOND_RUN, *arguments), cwd)
    assert second.returncode == 0, second.stderr[-3000:]
    return {"cwd": cwd, "runs": (first, second), "first_report": first_report}


def test_demo_runs_twice_and_replaces_only_its_own_output(demo):
    cwd = demo["cwd"]
    work = cwd / "demo"
    assert (work / "report.html").stat().st_mtime_ns > demo["first_report"]
    assert (work / "notes.txt").read_text() == "mine"  # not the demo's: left alone
    assert (work / ".vinvl_demo").is_file()
    for done in demo["runs"]:
        assert f"report: {work / 'report.html'}" in done.stdout
    html = (work / "report.html").read_text(encoding="utf-8")
    assert "Retrieval recall" in html and "text \u2192 image" in html and "two-stage" in html
    assert "data:image/png;base64," in html  # training curves
    assert html.count('<section class="query">') == 5
    # the ten shipped COCO photos, each with the tiny detector's boxes, under the plain warning
    assert html.count("<figure>") == 10 and html.count("data:image/jpeg;base64,") == 10
    assert '<p class="warning">The tiny detector (the shipped vinvl-detector-tiny config) is untrained' in html
    assert "`" not in html and "<code>vinvl extract</code>" in html
    # the curves name their split and setting (not the table's), and the table says what it measured
    assert re.search(r"<figcaption>Recall measured while training, on the minival split \(\d+ images\)", html)
    assert f"On the test split: {TEST_IMAGES} images" in html
    # stdout's table: named directions, the pairs scored as a whole count
    printed = demo["runs"][1].stdout
    assert "text -> image" in printed and "pairs_scored" not in printed
    assert re.search(r"^exhaustive .* \d{1,3}(,\d{3})*$", printed, re.MULTILINE), printed
    with open(work / "photos" / "predictions.tsv") as f:
        assert len(f.readlines()) == 10
    model_dir = work / "model"
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "vocab.txt").is_file()
    assert any(name.startswith("vdlrecords") for _, _, files in os.walk(model_dir / "runs") for name in files)
    # One training run's records only: the second run started from an empty model directory.
    with open(model_dir / "log_history.jsonl") as f:
        steps = [json.loads(line).get("step") for line in f]
    assert steps == sorted(steps)


def test_the_first_lines_the_demo_prints_are_its_own(demo):
    for done in demo["runs"]:
        lines = [line for line in re.split(r"[\r\n]+", done.stdout + done.stderr) if line.strip()]
        assert lines[0].startswith("[1/4] writing a synthetic corpus"), lines[:5]
        assert_quiet(done.stdout + done.stderr)
        assert "[    INFO]" not in done.stderr and "[   DEBUG]" not in done.stderr  # paddlenlp's logs: --verbose
        steps = [line[:5] for line in done.stdout.splitlines() if re.match(r"\[\d/4\]", line)]
        assert steps == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"]


def test_demo_refuses_a_folder_it_did_not_write(demo):
    cwd = demo["cwd"]
    (cwd / "mine").mkdir()
    (cwd / "mine" / "thesis.tex").write_text("keep")
    done = run(vinvl_cmd("demo", "--size", "ci", "--work_dir", "mine"), cwd)
    assert_user_error(done, "vinvl demo", "mine", "--work_dir")
    assert os.listdir(cwd / "mine") == ["thesis.tex"]


def _eval(demo, out, *flags):
    done = run(vinvl_cmd("eval", "--model_dir", "demo/model", "--data_dir", "demo/corpus", "--no_progress",
                         "--output_dir", out, *flags), demo["cwd"])
    assert done.returncode == 0, done.stderr
    assert_quiet(done.stderr)
    with open(demo["cwd"] / out / "metrics.json") as f:
        return json.load(f)


def test_eval_every_protocol_with_relative_paths(demo):
    cwd = demo["cwd"]
    default = _eval(demo, "eval/default")
    assert default["protocol"] == "coco1k" and set(default["results"]) == {"1k_5fold", "1k_subset"}
    whole = _eval(demo, "eval/5k", "--protocol", "coco5k")
    assert set(whole["results"]) == {"5k", "1k_5fold", "1k_subset"} and whole["num_images"] == TEST_IMAGES
    everything = _eval(demo, "eval/all", "--protocol", "all")
    assert everything["fold_size"] is None and everything["num_images"] == TEST_IMAGES
    named = _eval(demo, "eval/keys", "--protocol", "keys", "--eval_img_keys_file", "test_img_keys_1k.tsv")
    (cwd / "my_keys.tsv").write_text((cwd / "demo" / "corpus" / "test_img_keys_1k.tsv").read_text())
    own = _eval(demo, "eval/my_keys", "--protocol", "keys", "--eval_img_keys_file", "my_keys.tsv")
    for name in NAMES:  # the same galleries reached by each protocol give the same numbers
        assert everything["results"]["all"][name] == pytest.approx(whole["results"]["5k"][name]), name
        assert named["results"]["keys"][name] == pytest.approx(default["results"]["1k_subset"][name]), name
        assert own["results"]["keys"][name] == pytest.approx(named["results"]["keys"][name]), name


def test_eval_defaults_fit_the_split_and_a_protocol_that_cannot_apply_says_which_option(demo):
    minival = _eval(demo, "eval/minival", "--split", "minival")
    assert minival["protocol"] == "all" and minival["num_images"] == 40
    done = run(vinvl_cmd("eval", "--model_dir", "demo/model", "--data_dir", "demo/corpus", "--split", "minival",
                         "--protocol", "coco1k", "--no_progress"), demo["cwd"])
    assert_user_error(done, "vinvl eval", "equal folds", "--fold_size", "--protocol all")
    missing = run(vinvl_cmd("eval", "--model_dir", "demo/model", "--data_dir", "demo/corpus", "--protocol", "keys",
                            "--eval_img_keys_file", "no_such_keys.tsv"), demo["cwd"])
    assert_user_error(missing, "vinvl eval", "no_such_keys.tsv", "no such file")


def test_retrieve_answers_and_its_user_errors(demo):
    base = ["retrieve", "--model_dir", "demo/model", "--data_dir", "demo/corpus", "--top_k", "3"]
    done = run(vinvl_cmd(*base, "--text", "a dog on the grass", "--image_id", "500000"), demo["cwd"])
    assert done.returncode == 0, done.stderr
    answers = json.loads(done.stdout)
    assert len(answers) == 2 and len(answers[0]["images"]) == 3 and len(answers[1]["captions"]) == 3
    assert_quiet(done.stderr)
    # (exhaustive: no notice about the first stage before the error line, whatever heads the model records)
    unknown = run(vinvl_cmd(*base, "--first_stage", "exhaustive", "--image_id", "999999"), demo["cwd"])
    assert_user_error(unknown, "vinvl retrieve", "999999")
    assert_user_error(run(vinvl_cmd(*base, "--text", ""), demo["cwd"]), "vinvl retrieve", "--text", "empty")


def test_the_printed_recall_table_names_its_columns_and_counts_pairs_whole(capsys):
    from vinvl.apps.demo import _print_table

    recalls = {"t2i_r1": 6.0, "t2i_r5": 21.0, "t2i_r10": 35.0, "i2t_r1": 10.0, "i2t_r5": 30.0, "i2t_r10": 45.0, "rsum": 147.0}
    _print_table({"exhaustive": {**recalls, "pairs_scored": 320000.0, "seconds": 3.2}})
    lines = capsys.readouterr().out.splitlines()
    assert "text -> image" in lines[0] and "image -> text" in lines[0]
    assert lines[1].split() == ["setting", "R@1", "R@5", "R@10", "R@1", "R@5", "R@10", "rsum", "pairs", "scored"]
    assert lines[2].split() == ["exhaustive", "6.0", "21.0", "35.0", "10.0", "30.0", "45.0", "147.0", "320,000"]
