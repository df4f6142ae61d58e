"""Paper-style complexity: MobileFaceNet's 189.4M MADDs / 1.00M params and the Table 2 column."""
import json

import pytest

from facerec.models import PAPER_TABLE2_MADDS, count_complexity, create_model
from facerec.cli.complexity import main


def _cost(name, size=(112, 96), **kw):
    return count_complexity(create_model(name, input_size=size, **kw))


def test_plain_mobilefacenet_matches_the_paper():
    cost = _cost("mobilefacenet")
    assert abs(cost.madds - 189.41e6) / 189.41e6 < 0.005
    assert cost.madds == 189_408_256  # layer-by-layer sum of the survey's table
    assert abs(cost.params - 1.00e6) / 1.00e6 < 0.01
    big = _cost("mobilefacenet", (112, 112))
    assert abs(big.madds - 220.97e6) / 220.97e6 < 0.001
    assert big.params - cost.params == 512 * (49 - 42)  # only the GDConv kernel grows


def test_stage_rows_follow_the_layer_table():
    stages = _cost("mobilefacenet").stages()
    names = [s["name"] for s in stages]
    assert len(names) == 10 and names[0] == "conv3x3 s2" and names[-1] == "linear conv1x1 + BN"
    madds = [round(s["madds"] / 1e6, 2) for s in stages]
    # survey section 4.1, 112x96 column
    assert madds == [4.64, 1.55, 75.44, 16.90, 68.38, 13.96, 5.70, 2.75, 0.02, 0.07]
    assert sum(s["madds"] for s in stages) == _cost("mobilefacenet").madds


def test_embedding_size_changes_only_the_last_layer():
    a, b = _cost("mobilefacenet"), _cost("mobilefacenet", embedding_size=512)
    assert b.madds - a.madds == 512 * (512 - 128)


def test_variants_land_near_table2():
    plain = _cost("mobilefacenet").madds
    local = _cost("local_mobilefacenet")
    assert local.madds == plain and local.params > 4e6
    for name in ("drconv_mobilefacenet", "condconv_mobilefacenet"):
        madds = _cost(name).madds
        assert abs(madds / (PAPER_TABLE2_MADDS[name] * 1e6) - 1) < 0.01, (name, madds)


def test_cli_json(capsys):
    assert main(["--model", "mobilefacenet", "--input-size", "112", "96", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["madds"] == 189_408_256 and isinstance(out["params"], int)
    assert out["paper_madds"] == 189_000_000 and len(out["stages"]) == 10


def test_cli_tables(capsys):
    assert main(["--model", "mobilefacenet", "--input-size", "112", "96"]) == 0
    text = capsys.readouterr().out
    assert "189.41" in text and "paper Table 2" in text
    for name in PAPER_TABLE2_MADDS:
        assert name in text
    with pytest.raises(SystemExit):
        main(["--model", "nope"])


def test_count_does_not_depend_on_the_drconv_execution_path():
    from facerec.models import create_model

    model = create_model("drconv_mobilefacenet", input_size=(112, 96))
    layers = [m for m in model.modules() if hasattr(m, "path")]
    if not layers:
        pytest.skip("this DRConv2d has a single execution path")
    counts = {}
    for path in ("auto", "gather"):
        for m in layers:
            m.path = path
        counts[path] = count_complexity(model, (112, 96)).madds
    assert counts["auto"] == counts["gather"]
    assert all(m.path == "gather" for m in layers)  # restored after counting
