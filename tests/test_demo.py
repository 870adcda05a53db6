"""`vinvl demo` end to end at its CI size: report written with the R@K table, model saved."""
import os

import vinvl  # noqa: F401
from vinvl.demo import run_demo


def test_demo_runs_end_to_end(tmp_path):
    report = run_demo(str(tmp_path / "demo"), size="ci", seed=1)
    html = open(report, encoding="utf-8").read()
    assert "Retrieval recall" in html and "t2i_r1" in html and "two-stage" in html
    assert "data:image/png;base64," in html  # training curves
    assert html.count('<section class="query">') == 5
    model_dir = tmp_path / "demo" / "model"
    assert (model_dir / "model.safetensors").is_file() and (model_dir / "vocab.txt").is_file()
    assert any(name.startswith("vdlrecords") for _, _, files in os.walk(model_dir / "runs") for name in files)
