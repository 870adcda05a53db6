"""The `vinvl` command and scripts/*.py: exit statuses, one-line user errors, quiet start-up.

In-process tests pin the mechanism of vinvl.commands.cli.run_main on small mains written here; the
subprocess tests run the real entry points as a user does, from another working directory with
relative paths, on tiny synthetic data. (The demo, and eval / retrieve on its output, are in
tests/apps/test_demo.py.)
"""
import argparse
import os
import subprocess
import sys

import pytest

import vinvl  # noqa: F401  (CPU defaults and quiet start-up before paddlenlp)
from paddlenlp.utils.log import logger as paddlenlp_logger
from vinvl.commands.cli import COMMANDS, main, run_main
from vinvl.data import write_synthetic_corpus
from vinvl.errors import USER_ERROR_STATUS, UsageError, UserError

from support.commands import SOURCE_TREE, assert_quiet, assert_user_error, run, vinvl_cmd, vinvl_here

SCRIPTS = sorted(name for name in os.listdir(os.path.join(SOURCE_TREE, "scripts")) if name.endswith(".py"))


# ----- helpers ---------------------------------------------------------------------------------


# ----- the mechanism, in process ---------------------------------------------------------------


def test_top_level_help_lists_every_command_and_the_global_flags(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS) and "--debug" in out and "--verbose" in out


def test_unknown_command_is_a_one_line_user_error(capsys):
    assert main(["fly"]) == USER_ERROR_STATUS
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vinvl: error: unknown command 'fly'")


def _fails_with(error):
    def command_main(argv):
        raise error

    return command_main


@pytest.mark.parametrize(
    "error, expected",
    [
        (UserError("image 7 is not in the gallery"), "image 7 is not in the gallery"),
        (UsageError("--top_k must be positive,\n   got 0"), "--top_k must be positive, got 0"),  # one line
        (FileNotFoundError(2, "No such file or directory", "corpus/x.tsv"), "corpus/x.tsv: No such file or directory"),
        (FileExistsError("out exists and is not empty"), "out exists and is not empty"),
    ],
)
def test_user_errors_print_one_line_and_exit_2(capsys, error, expected):
    assert run_main(_fails_with(error), [], prog="vinvl thing") == USER_ERROR_STATUS
    captured = capsys.readouterr()
    assert captured.err == f"vinvl thing: error: {expected}\n" and captured.out == ""


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_debug_shows_the_traceback_of_a_user_error(capsys, monkeypatch, how):
    argv = ["--debug"] if how == "flag" else []
    if how == "environment":
        monkeypatch.setenv("VINVL_DEBUG", "1")
    assert run_main(_fails_with(UserError("bad id")), argv, prog="vinvl thing") == USER_ERROR_STATUS
    err = capsys.readouterr().err
    assert "Traceback" in err and "vinvl.errors.UserError: bad id" in err
    assert err.splitlines()[-1] == "vinvl thing: error: bad id"


def test_internal_errors_propagate_with_their_traceback():
    with pytest.raises(KeyError):
        run_main(_fails_with(KeyError("a bug")), [], prog="vinvl thing")


def test_argparse_errors_become_one_line_and_argparse_is_restored(capsys):
    original = argparse.ArgumentParser.error

    def command_main(argv):
        parser = argparse.ArgumentParser(prog="vinvl thing")
        parser.add_argument("--size", type=int, required=True)
        parser.parse_args(argv)

    for argv, message in ((["--size", "x"], "argument --size: invalid int value: 'x'"),
                          ([], "the following arguments are required: --size"),
                          (["--size", "1", "--bogus"], "unrecognized arguments: --bogus")):
        assert run_main(command_main, argv, prog="vinvl thing") == USER_ERROR_STATUS
        err = capsys.readouterr().err
        assert err == f"vinvl thing: error: {message} (see `vinvl thing --help`)\n"
    assert argparse.ArgumentParser.error is original
    with pytest.raises(SystemExit):  # outside run_main argparse exits as it always does
        command_main(["--bogus"])
    capsys.readouterr()


@pytest.mark.parametrize("returned, status", [(None, 0), ({"rsum": 1.0}, 0), ("path", 0), (0, 0), (1, 1), (3, 3)])
def test_exit_status_is_what_main_returns_when_an_int(returned, status):
    assert run_main(lambda argv: returned, [], prog="vinvl thing") == status


def test_sys_exit_in_a_command_gives_its_status(capsys):
    def command_main(argv):
        sys.exit("stopped: no data")

    assert run_main(command_main, [], prog="vinvl thing") == 1
    assert "stopped: no data" in capsys.readouterr().err
    assert run_main(lambda argv: sys.exit(0), [], prog="vinvl thing") == 0


def test_global_flags_are_taken_out_of_the_arguments_before_a_double_dash():
    seen = []
    assert run_main(seen.append, ["--verbose", "a", "--debug", "--", "--debug"], prog="vinvl thing") == 0
    assert seen == [["a", "--", "--debug"]]


def test_library_log_level_is_quiet_by_default_verbose_on_request_and_restored(monkeypatch):
    levels = []

    def command_main(argv):
        levels.append(paddlenlp_logger.logger.level)

    before = paddlenlp_logger.logger.level
    run_main(command_main, [], prog="vinvl thing")
    run_main(command_main, ["--verbose"], prog="vinvl thing")
    monkeypatch.setattr(sys.modules[__name__], "LIBRARY_LOG_LEVEL", "INFO", raising=False)  # read from main's module
    run_main(command_main, [], prog="vinvl thing")
    assert levels == [30, 10, 20]  # WARNING, DEBUG, the module's INFO
    assert paddlenlp_logger.logger.level == before


def test_a_sub_commands_return_code_reaches_the_vinvl_exit_status(tmp_path, capsys):
    # convert used to log its failure and exit 0 through `vinvl`
    assert main(["convert", str(tmp_path / "missing"), str(tmp_path / "out")]) == USER_ERROR_STATUS
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("vinvl convert: error: source checkpoint directory") and "missing" in err[-1]


# ----- the real entry points, as subprocesses from another working directory ------------------------------


@pytest.fixture(scope="module")
def cwd(tmp_path_factory):
    """A working directory away from the repository; the tests below give paths relative to it."""
    return tmp_path_factory.mktemp("elsewhere")


@pytest.mark.slow
def test_import_prints_nothing_and_a_users_own_thread_count_is_still_questioned(cwd):
    environment = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    for env, expected in ((environment, ""), (dict(environment, OMP_NUM_THREADS=str((os.cpu_count() or 1) + 1)), "WISELY")):
        # `import vinvl` imports neither paddle nor paddlenlp: a vinvl module that does imports them quietly
        done = subprocess.run([sys.executable, "-c", "import vinvl, vinvl.oscar"], cwd=str(cwd), env=dict(env, PYTHONPATH=SOURCE_TREE),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0
        if expected:
            assert expected in done.stderr  # a count vinvl did not choose keeps paddle's warning
        else:
            assert done.stderr == "" and done.stdout == ""


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.slow
def test_each_command_help_exits_0_quietly_and_a_bad_flag_exits_2(command, cwd, capfd):
    # Help in process: the status main() returns is the one `vinvl` exits with. The bad flag runs in a
    # new interpreter: its single stderr line also shows that importing the command prints nothing.
    assert main([command, "--help"]) == 0
    out, err = capfd.readouterr()
    assert "usage" in out.lower() and err == ""
    bad = run(vinvl_cmd(command, "--no_such_flag=1"), cwd)
    assert_user_error(bad, f"vinvl {command}")  # the line names the flag, or a required argument argparse checks first


@pytest.mark.slow
def test_make_synthetic_writes_relative_to_the_working_directory_and_refuses_an_existing_folder(cwd, capfd):
    done = run(vinvl_cmd("make-synthetic", "data/tiny", "--train", "6", "--minival", "0", "--val", "0", "--test", "4"), cwd)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"wrote {os.path.join('data', 'tiny')}"  # its own line comes first
    assert_quiet(done.stderr)
    assert (cwd / "data" / "tiny" / "test_captions.pt").is_file()
    again = vinvl_here(capfd, cwd, "make-synthetic", "data/tiny")
    assert again.returncode != 0 and "Traceback" not in again.stderr
    assert_user_error(again, "vinvl make-synthetic", "data/tiny", "not empty")


@pytest.mark.slow
def test_convert_relative_paths_and_its_failures(cwd, capfd):
    from paddlenlp.transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    BertModel(config).save_pretrained(str(cwd / "bert"))
    done = run(vinvl_cmd("convert", "bert", "models/oscar"), cwd)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(cwd / "models" / "oscar")
    assert (cwd / "models" / "oscar" / "model.safetensors").is_file()
    assert_user_error(vinvl_here(capfd, cwd, "convert", "bert", "models/oscar"), "vinvl convert", "already exists")
    assert_user_error(vinvl_here(capfd, cwd, "convert", "no_such_dir", "models/other"), "vinvl convert", "no_such_dir")


@pytest.mark.slow
def test_train_relative_paths_and_its_failures(cwd, capfd):
    write_synthetic_corpus(str(cwd / "data" / "train"), {"train": 8, "minival": 0, "val": 0, "test": 4}, seed=1)
    tiny = os.path.relpath(os.path.join(SOURCE_TREE, "model_configs", "tiny"), str(cwd))
    flags = ["--model_name_or_path", tiny, "--data_dir", "data/train", "--output_dir", "runs/tiny", "--do_train",
             "--max_steps", "2", "--per_device_train_batch_size", "4", "--save_strategy", "no", "--report_to", "none",
             "--eval_split", "test", "--evaluation_strategy", "no"]
    done = run(vinvl_cmd("train", *flags), cwd)
    assert done.returncode == 0, done.stderr
    assert (cwd / "runs" / "tiny" / "model.safetensors").is_file()
    assert "train_loss" in done.stderr  # what `vinvl train` reports: the Trainer's INFO lines
    assert_quiet(done.stderr)
    missing = vinvl_here(capfd, cwd, "train", *flags[:2], "--data_dir", "data/none", *flags[4:])
    assert_user_error(missing, "vinvl train", "--data_dir", "data/none")
    config = cwd / "broken.json"
    config.write_text('{"model_name_or_path": "x",}')
    assert_user_error(vinvl_here(capfd, cwd, "train", "broken.json"), "vinvl train", "broken.json")


@pytest.mark.slow
def test_benchmark_smoke_run_and_a_bad_value(cwd, capfd):
    done = run(vinvl_cmd("benchmark", "--work_dir", "bench", "--num_images", "4", "--train_steps", "0",
                         "--baseline_pairs", "8", "--cpu_probe_images", "0", "--matmul_size", "64", "--no_progress"), cwd)
    assert done.returncode == 0, done.stderr
    assert (cwd / "bench" / "benchmark.json").is_file()
    bad = vinvl_here(capfd, cwd, "benchmark", "--num_images", "0")
    assert_user_error(bad, "vinvl benchmark", "--num_images must be positive")


@pytest.mark.parametrize(
    "args, fragments",
    [  # good calls of these commands are tested in test_vision_extract, test_vision_convert and test_serving_index
        (["extract", "photos", "out", "--detector", "no_detector"], ["no_detector"]),
        (["convert-detector", "no_such.pth", "detector"], ["no_such.pth"]),
        (["index", "info", "no_index"], ["no_index", "not a gallery index"]),
    ],
)
def test_failing_calls_of_the_other_commands_exit_2_with_the_cause(args, fragments, cwd, capfd):
    prog = " ".join(["vinvl", *args[:2]]) if args[0] == "index" else f"vinvl {args[0]}"  # `vinvl index info: error:`
    assert_user_error(vinvl_here(capfd, cwd, *args), prog, *fragments)


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.slow
def test_each_script_fails_with_status_2_and_one_line_on_a_bad_flag(script, cwd):
    done = run([sys.executable, os.path.join(SOURCE_TREE, "scripts", script), "--no_such_flag=1"], cwd)
    assert_user_error(done, script)


@pytest.mark.slow
def test_a_script_succeeds_with_status_0(cwd):
    done = run([sys.executable, os.path.join(SOURCE_TREE, "scripts", "make_synthetic_coco.py"), "data/by_script",
                "--train", "2", "--minival", "0", "--val", "0", "--test", "2"], cwd)
    assert done.returncode == 0, done.stderr
    assert (cwd / "data" / "by_script" / "test_captions.pt").is_file()
    assert_quiet(done.stderr)


@pytest.mark.slow
def test_an_internal_error_exits_1_with_its_traceback(cwd):
    code = ("from vinvl.commands.cli import run_main\n"
            "def broken(argv):\n    raise RuntimeError('a bug')\n"
            "raise SystemExit(run_main(broken, [], prog='vinvl thing'))\n")
    done = run([sys.executable, "-c", code], cwd)
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "RuntimeError: a bug" in done.stderr
