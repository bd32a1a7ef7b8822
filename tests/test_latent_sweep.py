"""The latent sweep's bookkeeping (benchmarks/latent_sweep.py): which points are one run, and its docs block."""

import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))  # as running the script has it
from latent_sweep import END, START, point_arm, same_as, write_docs  # noqa: E402
from reporting import Results  # noqa: E402
from reproduction_runs import VARIANTS  # noqa: E402


def test_points_are_variants_of_the_svg_arm_and_auto_twins_are_found():
    assert point_arm("16", "1", 136) == "SVG"  # configs/demo/diffusion.yaml itself
    assert point_arm("all", "auto", 136) == "k=all, shift=auto"
    assert VARIANTS["k=all, shift=auto"] == {"base": "SVG", "overrides": ["latent_transform.components=136",
                                                                           "flow.shift=auto"]}
    # On the 8x8 latent the dimension rule sqrt(64 k / 4096) is 1 at k = 64: that point is the shift-1 run.
    assert same_as("64", "auto", ["1", "auto"], 8, 136) == "1"
    assert same_as("16", "auto", ["1", "auto"], 8, 136) is None  # 0.5
    assert same_as("16", "auto", ["0.5", "auto"], 8, 136) == "0.5"
    assert same_as("64", "1", ["1", "auto"], 8, 136) is None


def test_the_docs_block_has_a_table_per_step_and_a_plot(tmp_path):
    results = Results(tmp_path / "results.json")
    results.put({"machine": "test CPU", "samples": 2000, "date": "Dec 06 2026"}, "setting")
    for k, shift, fid in [("8", "1", 81.3), ("16", "1", 72.3), ("16", "auto", 70.0), ("all", "1", 90.5)]:
        results.put({"fid": fid, "components": 136 if k == "all" else int(k)}, "fid", k, shift, "1000")
    results.put({"same_as": "1"}, "fid", "64", "auto", "1000")
    results.put({"fid": 75.0, "components": 64}, "fid", "64", "1", "1000")
    page = tmp_path / "results.md"
    page.write_text(f"# Results\n\n{START}\nold\n{END}\n\nafter\n")
    write_docs(results, page, tmp_path / "sweep.png")
    text = page.read_text()
    assert "old" not in text and text.endswith("after\n")
    assert "| k | shift 1 | shift auto |" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| k")]
    assert rows == ["| 8 | 81.3 |  |", "| 16 | 72.3 | 70.0 |", "| 64 | 75.0 | = shift 1 |", "| all | 90.5 |  |"]
    assert "![FID vs k](sweep.png)" in text
    with Image.open(tmp_path / "sweep.png") as image:
        assert image.width > 300
