"""The 'lora' benchmark suite's bookkeeping (no scoring here: the suite itself takes an hour on a CPU)."""

from erase.benchmarks import SUITES
from erase.benchmarks.lora import BASE, pick_rank, render


def _row(method, concept, rank, ua, ira=0.9, cra=0.9, **extra):
    row = {"method": method, "concept": concept, "rank": rank, "UA": ua, "IRA": ira, "CRA": cra, "bytes": 4096}
    if rank not in ("delta", "-"):
        row.update(error_max=0.1, error_mean=0.05, left_out=0, max_rank=rank if rank != "full" else 64)
    return {**row, **extra}


def test_the_default_rank_is_the_smallest_within_tolerance_everywhere():
    rows = [_row("uce", "square", "delta", 1.0), _row("uce", "square", 1, 1.0), _row("uce", "square", 4, 1.0),
            _row("esd", "square", "delta", 0.92), _row("esd", "square", 1, 0.70), _row("esd", "square", 4, 0.91),
            _row("esd", "square", 16, 0.93)]
    assert pick_rank(rows) == 4  # rank 1 loses 22 points of UA on esd; 4 is within 2 points everywhere
    rows.append(_row("esd", "red", "delta", 0.9))
    rows.append(_row("esd", "red", 4, 0.9, ira=0.8))  # IRA 10 points off: 4 no longer qualifies, 16 was not measured there
    assert pick_rank(rows) == "full"
    assert pick_rank([]) == "full"


def test_the_section_renders_and_the_suite_is_registered():
    rows = [_row(BASE, "square", "-", 0.0, UA_heldout=0.0), _row("uce", "square", "delta", 1.0), _row("uce", "square", "full", 1.0),
            _row("uce", "square", 4, 1.0)]
    md = render(rows, "## LoRA exports")
    assert md.startswith("## LoRA exports") and "| `uce` | square | LoRA rank full (≤ 64) | 100 |" in md
    assert "| base model | square |" in md and "**4**" in md
    assert "lora" in SUITES
