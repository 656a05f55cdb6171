"""The robustness suite's table: finished cells are shown, unfinished ones are named, and a cell
made by other code (another key) is not shown as if it were current."""

from erase.benchmarks import robustness
from erase.benchmarks.toyworld import Cells


def _row(method, concept, seed, key, ua_ti):
    return {"key": key, "method": method, "concept": concept, "erase_seed": seed, "kind": "shape", "UA": 1.0, "IRA": 0.99,
            "CRA": 0.97, "UA_heldout": 0.9, "erase_s": 12.0, "peak": 0,
            "attacks": {a: {"UA": ua_ti if a == "ti" else 1.0} for a in robustness.ATTACKS}}


def test_render_shows_finished_cells_and_names_the_missing(tmp_path):
    cells = Cells(tmp_path / "r.jsonl")
    cells.add(_row("uce", "square", 0, robustness.cell_key("uce", "square", 0), 0.0))
    cells.add(_row("esd", "square", 0, "esd|square|0|stale-hash|stale", 0.5))  # from older code: not current
    cells.add(_row("rece", "square", 0, robustness.cell_key("rece", "square", 0), 0.9))
    cells.add({"key": robustness.restarts_key("rece", "square", 0), "method": "rece", "concept": "square", "erase_seed": 0,
               "ti_restarts": [0.95, 0.6]})  # the attacker's best of three runs: 60
    table = robustness.render(cells)
    uce = [line for line in table.splitlines() if line.startswith("| uce | 0 | square |")]
    assert uce == ["| uce | 0 | square | 100 | 99 | 97 | 90 | 0 | 100 | 100 | – | 0 | 12 |"]  # restarts not run yet: –
    rece = [line for line in table.splitlines() if line.startswith("| rece | 0 | square |")]
    assert rece == ["| rece | 0 | square | 100 | 99 | 97 | 90 | 90 | 100 | 100 | 60 | 60 | 12 |"]  # the min counts the best of 3
    assert not any(line.startswith("| esd |") for line in table.splitlines())
    missing = table.split("Not measured yet", 1)[1]
    assert "esd (seed 0) square" in missing and "rece (seed 1) striped" in missing and "advunlearn (seed 1) red" in missing
    assert "rece (seed 2) red" in missing and "advunlearn (seed 2)" not in missing  # three seeds for the recommended method
    entries = [e.strip(" .\n") for e in missing.split("written):", 1)[1].split("\n\n", 1)[0].split(";")]
    assert "uce (seed 0) square" not in entries and "ti restarts of uce (seed 0) square" in entries
    assert "ti restarts of rece (seed 0) square" not in entries
