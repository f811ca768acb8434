"""results.md rendering: MCQ, captioning and val-loss tables, published numbers beside rows of their protocol only,
chance, breakdowns, valid markdown."""

from fvlm_cli.eval.report import PUBLISHED, format_accuracy, render_mode_table, render_results_md

RESULTS = {
    "model": "fvlm-256m",
    "benchmarks": {
        "mvbench": {
            "chance": 0.273,
            "coarse_only": {
                "loglik": {"accuracy": 0.4123, "correct": 1649, "total": 4000, "se": 0.0112, "protocol": "lmms-eval",
                           "per_category": {"action_count": {"accuracy": 0.35, "correct": 70, "total": 200}},
                           "seconds": 123.45},
                "generate": {"accuracy": 0.39, "correct": 1560, "total": 4000, "se": None, "protocol": "lmms-eval",
                             "per_category": {}, "seconds": 99.0},
            },
            "coarse_fine": {
                "loglik": {"accuracy": 0.4501, "correct": 1800, "total": 4000, "se": 0.0105, "protocol": "lmms-eval",
                           "per_category": {"action_count": {"accuracy": 0.4, "correct": 80, "total": 200}},
                           "seconds": 200.0},
            },
        },
        "Video-MME": {"autoregressive": {"generate": {"accuracy": 0.5, "correct": 10, "total": 20, "se": 0.1,
                                                      "protocol": "lmms-eval", "per_category": {}, "seconds": 1.0,
                                                      "breakdowns": {"duration": {
                                                          "long": {"accuracy": 0.4, "correct": 4, "total": 10, "se": 0.2},
                                                          "short": {"accuracy": 0.6, "correct": 6, "total": 10, "se": None}}}}}},
        "captioning": {
            "coarse_only": {"generate": {"CIDEr": 0.523, "BLEU-4": 0.1234, "ROUGE-L": 0.4, "METEOR": None,
                                         "meteor_computed": False, "n": 50,
                                         "notes": ["METEOR skipped: java not found"], "seconds": 12.0}},
        },
        "val-loss": {"coarse_fine": {"loglik": {"loss": 2.345678, "tokens": 1000, "seconds": 3.26}}},
    },
}


def _tables(md: str) -> list[list[str]]:
    """Consecutive runs of lines starting with '|'."""
    tables, cur = [], []
    for line in md.splitlines():
        if line.startswith("|"):
            cur.append(line)
        elif cur:
            tables.append(cur)
            cur = []
    return tables + ([cur] if cur else [])


def _cols(line: str) -> int:
    return line.replace("\\|", "").count("|") - 1


def test_format_accuracy():
    assert format_accuracy(0.4123, 0.0112) == "41.2 ± 1.1"
    assert format_accuracy(0.39) == "39.0"
    assert format_accuracy(None) == "—"


def test_mvbench_table_rows_published_and_chance():
    md = render_results_md(RESULTS)
    lines = md.splitlines()
    assert lines[0] == "# Results: fvlm-256m"
    assert "## mvbench" in lines
    assert "| coarse_only | loglik | lmms-eval | 41.2 ± 1.1 | 4000 | 123.5 |" in lines
    assert "| coarse_only | generate | lmms-eval | 39.0 | 4000 | 99.0 |" in lines  # no SE -> no "±"
    assert "| coarse_fine | loglik | lmms-eval | 45.0 ± 1.1 | 4000 | 200.0 |" in lines
    assert "| SmolVLM2-256M (published) |  |  | 32.7 |  |  |" in lines
    assert "| SmolVLM2-500M (published) |  |  | 39.7 |  |  |" in lines
    assert "| SmolVLM2-2.2B (published) |  |  | 46.3 |  |  |" in lines
    assert "| random chance |  |  | 27.3 |  |  |" in lines
    assert "Published numbers: SmolVLM2 release (measured with lmms-eval)" in md
    # Published rows come after ours, chance last, all inside the mvbench table.
    mv = _tables(md)[0]
    assert mv[0] == "| mode | method | protocol | accuracy (%) | n | seconds |"
    assert mv[-1].startswith("| random chance")
    assert len(mv) == 2 + 3 + 3 + 1


def test_benchmark_name_matching_is_loose():
    md = render_results_md(RESULTS)
    assert "| SmolVLM2-2.2B (published) |  |  | 52.1 |  |  |" in md  # "Video-MME" -> video-mme
    assert PUBLISHED["lmms-eval"]["video-mme"]["SmolVLM2-256M"] == 33.7
    # Benchmarks without published numbers get none, and no chance row without a "chance" field.
    cap = render_results_md({"model": "m", "benchmarks": {"pope": {"coarse_only": {"generate": {
        "accuracy": 0.8, "total": 10, "se": 0.05, "f1": 0.75, "yes_ratio": 0.4}}}}})
    assert "published" not in cap and "chance" not in cap.replace("clustered", "")
    assert "| mode | method | protocol | accuracy (%) | F1 (%) | yes (%) | n | seconds |" in cap
    assert "| coarse_only | generate | fvlm | 80.0 ± 5.0 | 75.0 | 40.0 | 10 | — |" in cap


def test_captioning_and_val_loss_tables():
    md = render_results_md(RESULTS)
    assert "| mode | method | CIDEr (x100) | BLEU-4 (x100) | ROUGE-L (x100) | METEOR (x100) | n | seconds |" in md
    assert "| coarse_only | generate | 52.3 | 12.3 | 40.0 | n/a | 50 | 12.0 |" in md
    assert "- METEOR skipped: java not found" in md
    assert "| mode | method | loss | tokens | seconds |" in md
    assert "| coarse_fine | loglik | 2.3457 | 1000 | 3.3 |" in md


def test_every_table_is_rectangular_markdown():
    md = render_results_md(RESULTS, per_category=True)
    tables = _tables(md)
    assert len(tables) == 6  # mvbench, its per-category table, Video-MME, its duration table, captioning, val-loss
    for t in tables:
        assert len(t) >= 3
        assert set(t[1].replace("|", "")) <= set(":-")  # alignment row
        assert len({_cols(line) for line in t}) == 1
    assert "<details><summary>by category (%, ± clustered SE)</summary>" in md
    # Rows without per-category numbers (generate) get no column.
    assert "| category | coarse_only / loglik | coarse_fine / loglik |" in md
    assert "| action_count | 35.0 (n=200) | 40.0 (n=200) |" in md
    assert "| duration | autoregressive / generate |" in md
    assert "| long | 40.0 ± 20.0 (n=10) |" in md and "| short | 60.0 (n=10) |" in md


def test_render_mode_table_and_escaping():
    t = render_mode_table([{"mode": "a|b", "method": "loglik", "accuracy": 1.0, "total": 3, "se": 0.0, "seconds": 0.5}],
                          references=[("ref", 25.0)])
    assert t.splitlines() == [
        "| mode | method | protocol | accuracy (%) | n | seconds |",
        "|:--|:--|:--|--:|--:|--:|",
        "| a\\|b | loglik | fvlm | 100.0 ± 0.0 | 3 | 0.5 |",
        "| ref |  |  | 25.0 |  |  |",
    ]
    assert render_mode_table([]) == ""


def test_empty_benchmark():
    md = render_results_md({"model": "m", "benchmarks": {"mlvu": {"chance": 0.25}}})
    assert "## mlvu" in md and "_no results_" in md
