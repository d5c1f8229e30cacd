"""Per-case max differences between gradmem and the authors' reference code (fixture numbers).

    python benchmarks/reference_parity.py      # -> table on stdout, results/reference/parity.json

For each of the ten fixture cases: the largest absolute difference over every stored quantity
(WRITE losses, inner gradient norms, memory, READ/outer loss, outer gradients), with gradmem's
defaults and with `reference_compat`. The checks themselves are tests/test_reference_parity.py;
this script reuses its helpers to print the numbers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
import test_reference_parity as parity  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    tensors = parity.load_file(str(parity.FIXTURE.with_suffix(".safetensors")))
    rows = []
    for case_id, case in parity.CASES.items():
        want = parity.expected(case, tensors)
        row = {"case": case_id, "title": case["title"]}
        for label, compat in (("default", False), ("reference_compat", True)):
            got = parity.run_case(case, tensors, compat)
            keys = [k for k in want if compat or k != "grad.projection.bias"]
            diffs = {k: float((got[k] - want[k]).abs().max()) for k in keys}
            worst = max(diffs, key=diffs.get)
            row[label] = {"max_abs_diff": diffs[worst], "where": worst}
        rows.append(row)
        print(
            f"{case_id:>5} | default {row['default']['max_abs_diff']:.1e} ({row['default']['where']}) | "
            f"reference_compat {row['reference_compat']['max_abs_diff']:.1e}"
        )
    out = ROOT / "results" / "reference" / "parity.json"
    out.write_text(json.dumps({"torch": torch.__version__, "cases": rows}, indent=1) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
