"""One per-task table for several runs evaluated the same way: the base, then each run's final
policy under its own label (BENCHMARKS.md's ablation table).

    python scripts/ablation_table.py "GRPO only=runs/grpo_only/eval/eval.json" \\
        "SFT only=runs/sft_only/eval/eval.json" ...

Every eval.json must hold the same settings (seeds, turns, temperature, tasks); the base report
is taken from the first.
"""

from __future__ import annotations

import argparse
import sys

from services.trainer.evaluation.report import EvalSettings, load_reports, render_markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", metavar="LABEL=EVAL_JSON")
    args = parser.parse_args(argv)
    settings, columns = None, []
    for item in args.runs:
        label, _, path = item.partition("=")
        run_settings, reports = load_reports(path)
        if settings is None:
            settings = run_settings
            columns.append(next(r for r in reports if r.label == "base"))
        elif run_settings != settings:
            print(f"{path}: other settings than the first run's; not comparable", file=sys.stderr)
            return 2
        final = reports[-1]
        final.label = label
        columns.append(final)
    fields = {**settings, "tasks": tuple(settings["tasks"])}
    fields["trained_tasks"] = tuple(fields.get("trained_tasks", ()))
    print(render_markdown(columns, EvalSettings(**fields)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
