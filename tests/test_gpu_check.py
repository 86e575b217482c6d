"""bench/gpu_check.sh: its CPU smoke run produces the rows it promises, in a copy of docs/benchmarks.md."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "docs" / "benchmarks.md"
sys.path.insert(0, str(REPO / "bench"))

import gpu_report  # noqa: E402


def _table(section: str, header_start: str) -> list[dict[str, str]]:
    """The rows of the markdown table whose header line starts with `header_start`, as dicts."""
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    names = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(names, [c.strip() for c in line.strip("|").split("|")], strict=True)))
    return rows


def test_smoke_run_writes_its_rows_into_a_copy_only(tmp_path):
    copy = tmp_path / "benchmarks.md"
    copy.write_text(BENCHMARKS.read_text(encoding="utf-8"), encoding="utf-8")
    original = hashlib.sha256(BENCHMARKS.read_bytes()).hexdigest()
    env = dict(os.environ, CROSS_INIT_PYTHON=sys.executable)
    assert env.get("COMFYUI_PATH"), "run through scripts/test.sh (it sets COMFYUI_PATH)"
    done = subprocess.run(["bash", "bench/gpu_check.sh", "--smoke", "--lane", "current", "--output", str(copy)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert hashlib.sha256(BENCHMARKS.read_bytes()).hexdigest() == original  # the real page is untouched

    text = copy.read_text(encoding="utf-8")
    assert text.count(gpu_report.BEGIN) == 1 and text.count(gpu_report.END) == 1
    before = BENCHMARKS.read_text(encoding="utf-8").split(gpu_report.BEGIN)[0]
    assert text.split(gpu_report.BEGIN)[0] == before  # only the marked section changed
    section = text.split(gpu_report.BEGIN)[1].split(gpu_report.END)[0]
    assert "CPU smoke run" in section and "not GPU numbers" in section and "commit " in section
    assert "Not measured yet" not in section

    train = _table(section, "| host | model | UNet dtype")
    assert [row["UNet dtype"] for row in train] == ["float16", "bfloat16"]
    for row in train:
        assert row["errors"] == "", row
        assert float(row["fast run s (measured)"]) > 0 and float(row["fast s/step"]) > 0
        assert row["skipped"] == "0"
        per_step, steps = row["full s/step (measured steps)"].split()
        assert float(per_step) > 0 and steps == "(2)"
        # setup + 320 steps; the table rounds s/step to 3 decimals and seconds to whole ones
        assert float(row["full run s (projected)"]) >= 320 * (float(per_step) - 0.0005) - 0.5
        assert row["peak VRAM MiB"] == "n/a (CPU)" and row["plan"].startswith("micro-batch")
        assert float(row["grad cos"]) >= 0.9  # the trainer's fp16/bf16 gradient agrees with fp32
    assert train[0]["unscaled"] != "—" and train[1]["unscaled"] == "—"  # fp16 only
    peer = _table(section, "| host | model | ours fp32")
    assert len(peer) == 1 and peer[0]["errors"] == ""
    ours, reference, ratio = (float(peer[0][k]) for k in ("ours fp32 s/step", "diffusers s/step", "ratio"))
    assert ours > 0 and reference > 0 and abs(ratio - ours / reference) < 0.01 + 0.01 * ratio
    # the summary is printed too
    assert "| host | model | UNet dtype" in done.stdout


def test_section_is_replaced_not_appended(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\nintro\n", encoding="utf-8")
    rows = [{"kind": "peer", "lane": "oldest", "host": "0.3.75", "torch": "2", "device": "X", "model": "M",
             "ours_s_per_step": 1.0, "diffusers_s_per_step": 2.0}]
    gpu_report.replace_section(page, gpu_report.render(rows, [], 1.0, smoke=False))
    first = page.read_text(encoding="utf-8")
    rows[0]["ours_s_per_step"] = 3.0
    gpu_report.replace_section(page, gpu_report.render(rows, ["a note"], 1.0, smoke=False))
    second = page.read_text(encoding="utf-8")
    assert first.startswith("# Title\n\nintro\n") and second.startswith("# Title\n\nintro\n")
    assert second.count(gpu_report.BEGIN) == 1 and "| 3.000 | 2.000 | 1.50 |" in second and "a note" in second
    assert "| 1.000 | 2.000 | 0.50 |" in first and "CPU smoke run" not in second


def test_committed_page_says_gpu_rows_are_not_measured_yet():
    section = BENCHMARKS.read_text(encoding="utf-8").split(gpu_report.BEGIN)[1].split(gpu_report.END)[0]
    assert "Not measured yet" in section and "bash bench/gpu_check.sh" in section
    assert "| host | model |" not in section  # no rows until a GPU run writes them
