"""The recipes as the official fine-tuning ran: weight-decay groups by role, the total batch over
any number of devices, dropout from the recipe, the last step kept, mixed precision refused on
the CPU; and `vinvl train`'s recipe-plus-flags parsing and short help."""
import json
import math
import os
import subprocess
import sys

import pytest

import vinvl  # noqa: F401  (CPU runtime defaults before paddle)
import paddle
import paddle.nn as nn

from vinvl.benchmarks.official_optimizer import official_decays
from vinvl.commands.train import COMMON_OPTIONS, PROG, _full_parser, short_help
from vinvl.commands.train import main as train_main
from vinvl.data import write_synthetic_corpus
from vinvl.errors import UsageError
from vinvl.oscar.model_dir import load_retrieval_model
from vinvl.training import arguments
from vinvl.training.batch import plan_total_batch
from vinvl.training.decay import decay_groups
from vinvl.training.recipe import load_recipe
from vinvl.training.run import build_trainer
from vinvl.training.sampler import EpochSeededBatchSampler


from support.commands import SOURCE_TREE, assert_user_error, run, vinvl_cmd, vinvl_here
from support.paths import REPO, TINY_MODEL

RECIPES = {size: os.path.join(REPO, "model_configs", size, "train_coco_ir.json") for size in ("vinvl-base", "vinvl-large")}
TINY_RECIPE = os.path.join(REPO, "model_configs", "tiny", "train_synthetic.json")


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("recipes_corpus")
    write_synthetic_corpus(str(out), {"train": 12, "minival": 4, "val": 0, "test": 0}, seed=2)
    return str(out)


def _on_tiny(recipe: str, corpus_dir: str, output_dir: str, **overrides):
    """The recipe's arguments with the tiny model and corpus in place of the real ones."""
    local = dict(model_name_or_path=TINY_MODEL, data_dir=corpus_dir, output_dir=output_dir,
                 report_to=["none"], disable_tqdm=True)
    return load_recipe(recipe, {**local, **overrides})


# --- weight decay -------------------------------------------------------------------------------


@pytest.mark.slow
def test_base_config_decays_exactly_what_the_official_rule_decays():
    model, _ = load_retrieval_model(os.path.join(REPO, "model_configs", "vinvl-base"))
    decayed, exempt = decay_groups(model)
    names = decayed + exempt
    assert sorted(decayed) == sorted(name for name in names if official_decays(name))
    layer_norm_weights = [name for name in exempt if name.endswith("LayerNorm.weight")]
    assert len(layer_norm_weights) == 26  # embeddings + 2 per layer x 12: what paddlenlp's own rule decays
    assert all("LayerNorm" not in name and not name.endswith("bias") for name in decayed)


def test_decay_groups_follow_roles_not_names():
    class Renamed(nn.Layer):
        def __init__(self):
            super().__init__()
            self.final_ln = nn.LayerNorm(4)  # a normalisation whose name holds neither "LayerNorm" nor "norm"
            self.bias_proj = nn.Linear(4, 4)  # a weight matrix whose name holds "bias"

    decayed, exempt = decay_groups(Renamed())
    assert decayed == ["bias_proj.weight"]
    assert sorted(exempt) == ["bias_proj.bias", "final_ln.bias", "final_ln.weight"]


@pytest.mark.parametrize("train_only", ["all", "heads"])
def test_every_training_path_builds_its_optimizer_with_the_official_groups(corpus_dir, tmp_path, train_only):
    objective = "itm" if train_only == "all" else "distill"
    model_args, data_args, training_args = _on_tiny(
        RECIPES["vinvl-base"], corpus_dir, str(tmp_path), objective=objective, train_only=train_only,
        total_train_batch_size=8, per_device_train_batch_size=8, do_eval=False, evaluation_strategy="no",
    )
    trainer = build_trainer(model_args, data_args, training_args)
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    optimizer = trainer.optimizer
    names = {param.name: name for name, param in trainer.model.named_parameters()}
    optimized = [names[param.name] for param in optimizer.trained_parameters]
    decayed = [names[p.name] for p in optimizer.trained_parameters if optimizer.apply_decay_param_fun(p.name)]
    assert sorted(decayed) == sorted(name for name in optimized if official_decays(name))
    assert any(name.endswith(".bias") for name in set(optimized) - set(decayed))
    if train_only == "heads":
        assert all(name.startswith(("text_proj", "image_proj", "contrastive_logit_scale")) for name in optimized)
    else:
        assert any(name.endswith("LayerNorm.weight") for name in set(optimized) - set(decayed))


# --- total batch --------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipes_state_the_official_total_batch_dropout_and_last_step(recipe):
    with open(RECIPES[recipe], encoding="utf-8") as handle:
        options = json.load(handle)
    assert options["total_train_batch_size"] == 128  # 16 per GPU x 8 GPUs in both official commands
    assert options["hidden_dropout_prob"] == 0.1  # run_retrieval.py --drop_out
    assert options["load_best_model_at_end"] is False  # the released checkpoint is the last step
    assert (options["learning_rate"], options["num_train_epochs"]) == ({"vinvl-base": 2e-5, "vinvl-large": 7.5e-6}[recipe], 30)


@pytest.mark.parametrize("devices, per_device, accumulation", [(1, 16, 8), (2, 16, 4), (4, 16, 2), (8, 16, 1), (16, 8, 1)])
def test_the_total_batch_is_the_same_on_any_number_of_devices(devices, per_device, accumulation):
    plan = plan_total_batch(128, devices, 16)
    assert (plan.per_device, plan.accumulation_steps) == (per_device, accumulation)
    assert plan.per_device * plan.accumulation_steps * devices == 128
    assert "Total batch 128" in plan.describe()
    # The same number of steps per epoch (official COCO: 566,435 pairs), whatever the split.
    dataset = list(range(566_435))
    samplers = [EpochSeededBatchSampler(dataset, plan.per_device, seed=88, num_replicas=devices, rank=rank,
                                        accumulation_steps=plan.accumulation_steps) for rank in range(devices)]
    assert {len(sampler) // plan.accumulation_steps for sampler in samplers} == {4_426}  # ceil(566,435 / 128)
    # ... and each step the same 128 items: the ranks' first accumulation rounds together.
    first_step = sorted(i for sampler in samplers for batch in list(iter(sampler))[: plan.accumulation_steps] for i in batch)
    assert len(first_step) == 128
    single = EpochSeededBatchSampler(dataset, 128, seed=88)
    assert first_step == sorted(next(iter(single)))


def test_a_total_the_devices_cannot_reach_is_refused():
    with pytest.raises(UsageError, match="128 cannot be split evenly over 3"):
        plan_total_batch(128, 3, 16)
    with pytest.raises(UsageError, match="gradient_accumulation_steps is derived"):
        load_recipe(RECIPES["vinvl-base"], {"gradient_accumulation_steps": 2})


def test_the_per_device_batch_is_a_ceiling_memory_sets():
    plan = plan_total_batch(128, 1, 12)  # 12 does not divide 128: the largest that does and fits
    assert (plan.per_device, plan.accumulation_steps) == (8, 16)


# --- dropout and the end of the run -------------------------------------------------------------


def test_dropout_comes_from_the_recipe_whatever_the_checkpoint_says(corpus_dir, tmp_path):
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    with open(os.path.join(TINY_MODEL, "config.json"), encoding="utf-8") as handle:
        config = json.load(handle)
    config["hidden_dropout_prob"] = 0.3
    (checkpoint / "config.json").write_text(json.dumps(config))
    for name in os.listdir(TINY_MODEL):
        if name != "config.json":
            os.symlink(os.path.join(TINY_MODEL, name), checkpoint / name)
    model_args, data_args, training_args = _on_tiny(
        RECIPES["vinvl-base"], corpus_dir, str(tmp_path / "out"), model_name_or_path=str(checkpoint),
        total_train_batch_size=8, per_device_train_batch_size=8, do_eval=False, evaluation_strategy="no",
    )
    model = build_trainer(model_args, data_args, training_args).model
    assert model.config.hidden_dropout_prob == 0.1 and model.config.attention_probs_dropout_prob != 0.3
    rates = {layer.p for layer in model.sublayers() if isinstance(layer, nn.Dropout)}
    assert 0.1 in rates and 0.3 not in rates
    unset = load_recipe(RECIPES["vinvl-base"], {"hidden_dropout_prob": None, "model_name_or_path": str(checkpoint),
                                                 "data_dir": corpus_dir, "output_dir": str(tmp_path / "o2")})
    assert unset[0].hidden_dropout_prob is None  # without it, the checkpoint's value stays


def test_the_recipes_keep_the_last_step_and_best_by_rsum_is_an_option():
    _, _, last = load_recipe(RECIPES["vinvl-base"])
    assert not last.load_best_model_at_end and last.metric_for_best_model == "rsum"
    _, _, best = load_recipe(RECIPES["vinvl-base"], {"load_best_model_at_end": True})
    assert best.load_best_model_at_end and best.greater_is_better


# --- mixed precision ----------------------------------------------------------------------------


@pytest.mark.skipif(not paddle.device.get_device().startswith("cpu"), reason="the refusal is the CPU's")
@pytest.mark.parametrize("flag", ["--fp16", "--bf16"])
def test_mixed_precision_is_refused_on_the_cpu_before_anything_loads(capfd, tmp_path, flag):
    output = tmp_path / "out"
    done = vinvl_here(capfd, tmp_path, "train", TINY_RECIPE, flag, "--data_dir", "no/such/corpus", "--output_dir", str(output))
    assert_user_error(done, "vinvl train", flag, "GPU")  # before the missing corpus is even looked at
    assert not output.exists()


def test_master_weights_are_refused_where_mixed_precision_runs(corpus_dir, tmp_path, monkeypatch):
    """fp16 O2 keeps float32 master weights the official AdamW step does not update: refused at start
    (the CPU refuses mixed precision before this, so the check is run as on a GPU)."""
    monkeypatch.setattr(arguments, "runs_on_cpu", lambda: False)
    model_args, data_args, training_args = _on_tiny(TINY_RECIPE, corpus_dir, str(tmp_path), fp16=True, fp16_opt_level="O2")
    with pytest.raises(ValueError, match="--fp16_opt_level O2"):
        arguments.validate_arguments(model_args, data_args, training_args)
    _, _, o1 = _on_tiny(TINY_RECIPE, corpus_dir, str(tmp_path), fp16=True)
    arguments.validate_arguments(model_args, data_args, o1)


@pytest.mark.skipif(not paddle.device.is_compiled_with_cuda() or paddle.device.cuda.device_count() == 0,
                    reason="mixed precision needs a GPU")
@pytest.mark.parametrize("flag", ["fp16", "bf16"])
def test_mixed_precision_trains_on_a_gpu(corpus_dir, tmp_path, flag):
    model_args, data_args, training_args = _on_tiny(
        TINY_RECIPE, corpus_dir, str(tmp_path), **{flag: True}, max_steps=2, do_eval=False,
        evaluation_strategy="no", save_strategy="no",
    )
    trainer = build_trainer(model_args, data_args, training_args)
    result = trainer.train()
    assert trainer.state.global_step == 2 and math.isfinite(result.training_loss)


# --- `vinvl train`: recipe + flags, renamed keys, help ------------------------------------------


def test_a_recipe_is_the_base_and_flags_override_it(capfd, corpus_dir, tmp_path):
    output = tmp_path / "run"
    recipe = tmp_path / "recipe.json"
    with open(TINY_RECIPE, encoding="utf-8") as handle:
        options = json.load(handle)
    options.update(model_name_or_path=TINY_MODEL, data_dir=corpus_dir, output_dir=str(tmp_path / "recipe_out"),
                   report_to=["none"], evaluation_strategy="no", do_eval=False, save_strategy="no")
    recipe.write_text(json.dumps(options))
    train_main([str(recipe), "--max_steps", "3", "--output_dir", str(output), "--learning_rate", "1e-4"])
    state = json.loads((output / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and state["max_steps"] == 3
    assert (output / "model.safetensors").is_file() and not (tmp_path / "recipe_out").exists()
    # The shipped recipe plus one flag (issue 25 item 6): no "required" error for what the recipe holds.
    os.symlink(os.path.join(REPO, "model_configs"), tmp_path / "model_configs")
    done = vinvl_here(capfd, tmp_path, "train", "model_configs/tiny/train_synthetic.json", "--max_steps", "20")
    assert "are required" not in done.stderr
    assert_user_error(done, "vinvl train", "outputs/synthetic_coco")  # the recipe's corpus, not written here


@pytest.mark.parametrize("where", ["recipe", "flag"])
def test_the_old_first_stage_key_is_refused_naming_the_new_one(capfd, tmp_path, where):
    if where == "recipe":
        recipe = tmp_path / "old.json"
        recipe.write_text(json.dumps({"model_name_or_path": TINY_MODEL, "data_dir": ".", "output_dir": "o", "eval_top_k": 8}))
        done = vinvl_here(capfd, tmp_path, "train", str(recipe))
        assert_user_error(done, "vinvl train", "old.json", "eval_top_k", "eval_candidates")
    else:
        done = vinvl_here(capfd, tmp_path, "train", TINY_RECIPE, "--eval_top_k", "8")
        assert_user_error(done, "vinvl train", "--eval_top_k", "--eval_candidates")


@pytest.mark.slow
def test_short_help_lists_real_options_and_needs_no_paddle(tmp_path):
    parser_options = {action.dest for action in _full_parser()._actions}
    assert {name for _, options in COMMON_OPTIONS for name, _, _ in options} <= parser_options
    text = short_help()
    assert text.startswith(f"usage: {PROG} ") and PROG == "vinvl train"
    assert len(text.splitlines()) < 60
    code = ("import sys; from vinvl.commands.cli import main; main(['train', '--help']); "
            "print('PADDLE' if 'paddle' in sys.modules else 'NO PADDLE')")
    done = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=SOURCE_TREE), timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: vinvl train") and done.stdout.rstrip().endswith("NO PADDLE")
    full = run(vinvl_cmd("train", "--help_all"), tmp_path)
    assert full.returncode == 0 and full.stdout.startswith("usage: vinvl train")
    assert "--adam_beta2" in full.stdout and "--adam_beta2" not in text
