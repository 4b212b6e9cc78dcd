"""Where the peak memory of a CPU training step goes: live tensors, the process outside the heap, allocator slack.

For each variant (its own process, set up as in ``train_step.py``) a thread samples, every 2 ms through one
warm-up step and one measured step, the resident memory (RSS) and the bytes glibc's allocator has handed out and
not yet got back (``mallinfo2``: chunks in use plus mmapped chunks), labelled with the phase of the step. A peak
of resident memory then splits into

- live: what tensors and Python objects hold (weights, AdamW moments, activations, gradients, temporaries);
- outside the heap: RSS minus live just before the first step (the code of torch and its libraries, mostly);
- slack: the rest, blocks the allocator has got back but keeps resident for reuse.

``live_ratio`` compares the largest live memory plus the process outside the heap: the ratio an allocator that
keeps nothing would give (at a price: glibc returning every block costs page faults in the next step).

Linux with glibc 2.33 or later (``mallinfo2``); CPU only.

Usage: python benchmarks/memory_breakdown.py [--model cada_base --batch 4 --variants baseline,fp32,fp32+in_backward]
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import emit, print_table, run_variant_processes, setup_threads  # noqa: E402
from benchmarks.train_step import VARIANTS, prepare_step  # noqa: E402

PHASES = ("forward", "backward", "optimizer", "idle")
SAMPLE_SECONDS = 0.002


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _memory_reader():
    """A function returning (resident MiB, live heap MiB) of this process."""
    libc = ctypes.CDLL("libc.so.6")
    if not hasattr(libc, "mallinfo2"):
        raise SystemExit("memory_breakdown.py needs glibc 2.33 or later (mallinfo2)")
    libc.mallinfo2.restype = _MallInfo2
    page_mib = os.sysconf("SC_PAGE_SIZE") / 2**20
    statm = Path("/proc/self/statm")

    def read() -> tuple[float, float]:
        info = libc.mallinfo2()
        return int(statm.read_text().split()[1]) * page_mib, (info.uordblks + info.hblkhd) / 2**20
    return read


def measure_variant(args, variant: str) -> dict:
    """Peaks of RSS and live heap per phase of the second (measured) step of one variant."""
    read = _memory_reader()
    phase = ["setup"]
    peaks: dict[str, dict[str, float]] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            rss, live = read()
            peak = peaks.setdefault(phase[0], {"rss_mib": 0.0, "live_at_rss_peak_mib": 0.0, "live_mib": 0.0})
            if rss > peak["rss_mib"]:
                peak["rss_mib"], peak["live_at_rss_peak_mib"] = rss, live
            peak["live_mib"] = max(peak["live_mib"], live)
            time.sleep(SAMPLE_SECONDS)

    step, _ = prepare_step(args, variant, mark=lambda name: phase.__setitem__(0, name))
    rss, live = read()
    outside_heap = rss - live
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    step()  # warm-up: AdamW's moments are created here
    peaks.clear()
    step()
    phase[0] = "idle"
    time.sleep(0.2)
    stop.set()
    sampler.join()
    top = max(PHASES, key=lambda name: peaks.get(name, {}).get("rss_mib", 0.0))
    peak = peaks[top]
    row = {"peak_rss_mib": peak["rss_mib"], "live_at_peak_mib": peak["live_at_rss_peak_mib"],
           "outside_heap_mib": outside_heap,
           "slack_at_peak_mib": peak["rss_mib"] - peak["live_at_rss_peak_mib"] - outside_heap,
           "max_live_mib": max(p["live_mib"] for p in peaks.values()),
           "live_after_forward_mib": peaks["forward"]["live_mib"], "live_idle_mib": peaks["idle"]["live_mib"]}
    return {"variant": variant, "peak_phase": top, **{k: round(v) for k, v in row.items()}, "phases": peaks}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cada_base")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--image-size", type=int, nargs=2, default=(224, 224))
    parser.add_argument("--variants", default="baseline,fp32,fp32+in_backward")
    parser.add_argument("--one", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    args.device = "cpu"
    setup_threads()
    if args.one:
        print(json.dumps(measure_variant(args, args.one)))
        return {}
    rows = run_variant_processes(__file__, args.variants.split(","), [
        "--model", args.model, "--batch", str(args.batch), "--image-size", *map(str, args.image_size)])
    base = next((r for r in rows if r["variant"] == "baseline" and "error" not in r), None)
    for row in rows:
        if base and "error" not in row:
            row["memory_ratio"] = row["peak_rss_mib"] / base["peak_rss_mib"]
            # what the ratio would be if the allocator kept nothing it got back
            row["live_ratio"] = ((row["max_live_mib"] + row["outside_heap_mib"])
                                 / (base["max_live_mib"] + base["outside_heap_mib"]))
    result = {"model": args.model, "batch": args.batch, "image_size": list(args.image_size), "rows": rows}
    print_table(f"peak memory of a training step, {args.model}, batch {args.batch}, {tuple(args.image_size)}, cpu "
                "(MiB; peak = live + outside heap + slack)", rows,
                ["variant", "peak_rss_mib", "peak_phase", "live_at_peak_mib", "outside_heap_mib", "slack_at_peak_mib",
                 "max_live_mib", "live_after_forward_mib", "live_idle_mib", "memory_ratio", "live_ratio", "error"])
    emit("memory_breakdown", result, args.json)
    return result


if __name__ == "__main__":
    main()
