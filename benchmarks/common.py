"""Shared pieces of the benchmarks: CUHK-PEDES-like captions, batches, timing, peak memory, results files.

Peak memory on CPU is the process's resident high-water mark (Linux ``VmHWM``, reset through
``/proc/self/clear_refs``); on CUDA it is ``torch.cuda.max_memory_allocated``. ``--save [DIR]`` merges a run into
``DIR/<device>-torch<version>.json`` (default DIR: ``benchmarks/results``):
``{"device", "device_type", "torch", "benchmarks": {benchmark: {setting: run}}}``, a run replacing the earlier
one of the same benchmark and setting; ``benchmarks/report.py`` renders the files as tables.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import render_table  # noqa: E402
from datasets.ara_masking import mask_attribute_tokens, pack_candidate_groups  # noqa: E402
from datasets.attributes import attribute_candidates  # noqa: E402
from datasets.synthetic import describe, sample_identity  # noqa: E402
from datasets.tokenization import encode  # noqa: E402
from utils.config_schema import ARALossConfig  # noqa: E402
from utils.vocab import MAX_TEXT_LEN  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
CUHK_MEAN_WORDS, CUHK_STD_WORDS = 23.5, 7.0  # CUHK-PEDES caption length in words
ARA_PROB = ARALossConfig().prob


def cuhk_like_captions(count: int, seed: int = 0, mean_words: float = CUHK_MEAN_WORDS) -> list[str]:
    """Synthetic captions whose word counts follow N(mean, 7^2) clipped to [6, 70] (CUHK-PEDES: 23.5 on average)."""
    rng = np.random.default_rng(seed)
    captions = []
    for _ in range(count):
        target = int(np.clip(round(rng.normal(mean_words, CUHK_STD_WORDS)), 6, 70))
        words: list[str] = []
        while len(words) < target:
            words += describe(sample_identity(rng), rng).lower().split()
        captions.append(" ".join(words[:target]))
    return captions


def prepare_text(captions: list[str], tokenizer, tagger, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Token ids, mask and ARA-masked ids/labels of captions: tokenised and POS-tagged from scratch."""
    ids, mask = encode(tokenizer, captions, MAX_TEXT_LEN)
    groups = pack_candidate_groups([attribute_candidates(c, tokenizer, tagger, max_len=MAX_TEXT_LEN)
                                    for c in captions], MAX_TEXT_LEN)
    ara_ids, ara_labels = mask_attribute_tokens(ids, groups, ARA_PROB, generator=generator)
    return {"input_ids": ids, "attention_mask": mask, "ara_input_ids": ara_ids, "ara_labels": ara_labels}


def train_batch(text: dict[str, torch.Tensor], image_size: tuple[int, int], seed: int = 0) -> dict[str, torch.Tensor]:
    """A training batch: random images, two captions per person (labels 0, 0, 1, 1, ...)."""
    batch = len(text["input_ids"])
    generator = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(batch, 3, *image_size, generator=generator),
            "label": torch.arange(batch) // 2, **text}


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        Path("/proc/self/clear_refs").write_text("5")


def proc_status_kib(field: str) -> int:
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``, ...) in KiB."""
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory since the last reset: allocated CUDA memory, or resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return proc_status_kib("VmHWM") / 1024


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def setup_threads() -> None:
    """Uses the cores given by OMP_NUM_THREADS (default: all)."""
    if "OMP_NUM_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def run_variant_processes(script: str, variants: list[str], arguments: list[str]) -> list[dict]:
    """Runs ``script --one VARIANT *arguments`` once per variant, each in its own process (so that its peak
    memory is its own), and returns the JSON row each prints last; a failed run gives a row with its error."""
    rows = []
    for variant in variants:
        done = subprocess.run([sys.executable, script, "--one", variant, *arguments], capture_output=True, text=True)
        if done.returncode:
            last_line = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}, no message"])[-1]
            rows.append({"variant": variant, "error": last_line[:120]})  # e.g. killed for memory
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return rows


def device_name(device: torch.device) -> str:
    """The accelerator's name, or the CPU's model (``/proc/cpuinfo``) without trademark signs and clock."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.M) if cpuinfo.exists() else None
    model = found.group(1) if found else "unknown CPU"
    return re.sub(r"\s+", " ", re.sub(r"\((R|TM)\)|CPU @ .*", "", model)).strip()


def slug(text: str) -> str:
    """Lower case, every run of characters other than letters, digits and dots replaced by one '-'."""
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


def save_result(directory: Path, device: torch.device, benchmark: str, setting: str, run: dict) -> Path:
    """Merges ``run`` into the device's results file as ``benchmarks[benchmark][setting]`` (atomic write)."""
    name = device_name(device) if device.type == "cuda" else f"cpu {device_name(device)}"
    path = Path(directory) / f"{slug(name)}-torch{slug(torch.__version__)}.json"  # e.g. cpu-amd-epyc-torch2.14.1-cu128
    content = {"device": device_name(device), "device_type": device.type, "torch": torch.__version__,
               "benchmarks": {}}
    if path.exists():
        content["benchmarks"] = json.loads(path.read_text())["benchmarks"]
    content["benchmarks"].setdefault(benchmark, {})[setting] = run
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(content, indent=1, sort_keys=True) + "\n")
    os.replace(temporary, path)
    print(f"saved {benchmark} [{setting}] to {path}")
    return path


def add_output_arguments(parser) -> None:
    """``--json`` (one JSON line on stdout) and ``--save [DIR]`` (merge into the results file)."""
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    parser.add_argument("--save", nargs="?", const=str(RESULTS_DIR), default=None, metavar="DIR",
                        help=f"merge the result into DIR/<device>-torch<version>.json (default DIR: {RESULTS_DIR})")


def finish(args, benchmark: str, setting: str, run: dict, device: torch.device) -> None:
    """Prints the run as its markdown table, then as a JSON line (``--json``), and saves it (``--save``)."""
    run = {**run, "threads": torch.get_num_threads()}
    print(f"\n{benchmark}: {setting}\n")
    print(render_table(benchmark, {setting: run}, device.type))
    if args.json:
        print(json.dumps({"benchmark": benchmark, "setting": setting, "device": device_name(device), **run}))
    if args.save:
        save_result(Path(args.save), device, benchmark, setting, run)
