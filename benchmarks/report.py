"""Renders the benchmark results files as markdown tables: one table per benchmark and device.

Reads every ``*.json`` in ``--results`` (as the benchmarks' ``--save`` writes them) and prints one table per
benchmark, device and torch version; ratios compare rows of one run (the authors' way, the full matrix, the
training step rate measured alongside). ``--update FILE`` puts the tables between FILE's BEGIN and END lines.

Usage: python benchmarks/report.py [--results DIR] [--update docs/performance.md]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.cli import add_debug_flag, run_main  # noqa: E402
from utils.errors import CadaError  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
BEGIN = "<!-- benchmark tables: python benchmarks/report.py --update docs/performance.md -->"
END = "<!-- end of benchmark tables -->"
AUTHORS = "authors' way"


def number(value: float) -> str:
    """Three significant digits, whole numbers with thousands separators from 1,000 on."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def ratio(value: float) -> str:
    return f"{value:.2f}×"


def train_step_rows(run: dict) -> list[list[str]]:
    """variant, s/step, samples/s, speed vs the authors' way, peak MiB, peak vs the authors' way."""
    base = next((r for r in run["rows"] if r["variant"] == "baseline" and "error" not in r), None)
    rows = []
    for row in run["rows"]:
        name = AUTHORS if row["variant"] == "baseline" else row["variant"]
        if "error" in row:
            rows.append([name, f"failed: {row['error']}", "", "", "", ""])
            continue
        rows.append([name, number(row["seconds_per_step"]), number(row["samples_per_s"]),
                     ratio(base["seconds_per_step"] / row["seconds_per_step"]) if base else "",
                     number(row["peak_mib"]), ratio(row["peak_mib"] / base["peak_mib"]) if base else ""])
    return rows


def eval_two_stage_rows(run: dict) -> list[list[str]]:
    """path, seconds, share of re-ranking, speed vs the authors' way, same top k as the authors' way."""
    def total(row: dict) -> float:
        return row["stage1_s"] + row["rerank_s"]
    base = next(r for r in run["rows"] if r["variant"] == "baseline")
    rows = []
    for row in run["rows"]:
        authors = row["variant"] == "baseline"
        name = f"{AUTHORS}, fp32" if authors else f"ours, {'fp32' if row['variant'] == 'off' else row['variant']}"
        rows.append([name, number(total(row)), f"{100 * row['rerank_s'] / total(row):.0f} %",
                     ratio(total(base) / total(row)), "" if authors else ("yes" if row["same_top_k"] else "no")])
    return rows


def data_pipeline_rows(run: dict) -> list[list[str]]:
    """workers, samples/s, multiple of the training step's samples/s."""
    step_rate = run.get("step_rate")
    return [[str(row["workers"]), number(row["samples_per_s"]),
             ratio(row["samples_per_s"] / step_rate) if step_rate else ""] for row in run["rows"]]


def eval_memory_rows(run: dict) -> list[list[str]]:
    """approach, peak extra MiB, seconds, memory as a fraction of the full matrix's."""
    full = next(r for r in run["rows"] if r["approach"] == "full matrix")
    rows = []
    for row in run["rows"]:
        name = row["approach"]
        if name == "full matrix":
            name += f" (measured on {run['measured_queries']:,} queries, scaled)"
        rows.append([name, number(row["peak_extra_mib"]), number(row["seconds"]),
                     ratio(row["peak_extra_mib"] / full["peak_extra_mib"])])
    return rows


def dist_startup_rows(run: dict) -> list[list[str]]:
    return [["yes" if run["all_reduce_ok"] else "no", number(run["startup_s"])]]


TABLES = {  # benchmark: (title, columns after "setting", rows of one run)
    "train_step": ("Training step (forward, backward, AdamW)",
                   ["variant", "s / step", "samples / s", "speed vs authors'", "peak MiB", "memory vs authors'"],
                   train_step_rows),
    "eval_two_stage": ("Two-stage evaluation (cosine top k, then ITM re-ranking)",
                       ["path", "seconds", "re-ranking", "speed vs authors'", "same top k as authors'"],
                       eval_two_stage_rows),
    "data_pipeline": ("Training data loader", ["workers", "samples / s", "vs the fp32 training step"],
                      data_pipeline_rows),
    "eval_memory": ("Retrieval metrics on an ICFG-PEDES-shaped problem",
                    ["approach", "peak extra MiB", "seconds", "memory vs full matrix"], eval_memory_rows),
    "dist_startup": ("torchrun start-up", ["all-reduce correct", "start-up s"], dist_startup_rows),
}


def render_table(benchmark: str, runs: dict[str, dict], device_type: str = "cpu") -> str:
    """The markdown table of one benchmark's runs (``{setting: run}``) on one device."""
    _, columns, make_rows = TABLES[benchmark]
    lines = ["| " + " | ".join(["setting", *columns]) + " |", "|---" + "|---:" * len(columns) + "|"]
    for setting, run in runs.items():
        threads = run.get("threads")
        label = f"{setting}, {threads} thread{'s' * (threads != 1)}" if device_type == "cpu" and threads else setting
        for index, cells in enumerate(make_rows(run)):
            lines.append("| " + " | ".join([label if index == 0 else "", *cells]) + " |")
    return "\n".join(lines)


def load_results(directory: Path) -> list[tuple[Path, dict]]:
    """``(path, content)`` of every results file of ``directory``, GPUs first, then by device and torch version;
    a file that does not fit the format is an error naming the file and what was expected."""
    files = []
    for path in sorted(Path(directory).glob("*.json")):
        try:
            content = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise CadaError(f"{path} is not valid JSON (line {error.lineno}): {error.msg}") from None
        for key in ("device", "device_type", "torch", "benchmarks"):
            if key not in content:
                raise CadaError(f"{path}: missing key '{key}'; expected a file written by a benchmark's --save")
        unknown = sorted(set(content["benchmarks"]) - set(TABLES))
        if unknown:
            raise CadaError(f"{path}: unknown benchmark '{unknown[0]}'; known: {', '.join(TABLES)}")
        files.append((path, content))
    return sorted(files, key=lambda item: (item[1]["device_type"] != "cuda", item[1]["device"], item[1]["torch"]))


def render(files: list[tuple[Path, dict]]) -> str:
    """All tables: benchmark by benchmark, one per device and torch version that ran it."""
    sections = []
    for benchmark, (title, _, _) in TABLES.items():
        for path, content in files:
            runs = content["benchmarks"].get(benchmark)
            if runs:
                kind = "GPU" if content["device_type"] == "cuda" else content["device_type"].upper()
                try:
                    table = render_table(benchmark, runs, content["device_type"])
                except (KeyError, TypeError, StopIteration) as error:
                    raise CadaError(f"{path}: {benchmark} holds a run without the expected fields "
                                    f"({type(error).__name__}: {error})") from None
                sections.append(f"### {title}: {content['device']} ({kind}), torch {content['torch']}\n\n{table}\n")
    return "\n".join(sections)


def update(path: Path, tables: str) -> None:
    """Replaces what lies between the BEGIN and END lines of ``path`` with ``tables``."""
    before, _, rest = path.read_text().partition(BEGIN)
    if END not in rest:
        raise CadaError(f"{path}: expected the marker lines '{BEGIN}' and, after it, '{END}'")
    path.write_text(f"{before}{BEGIN}\n\n{tables}\n{END}{rest.split(END, 1)[1]}")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="folder of results files")
    parser.add_argument("--update", type=Path, help="markdown file whose marked block gets the tables")
    add_debug_flag(parser)
    args = parser.parse_args(argv)
    tables = render(load_results(args.results))
    if args.update:
        update(args.update, tables)
    else:
        print(tables)


if __name__ == "__main__":
    run_main(main)
