"""``python -m engine demo``: decloud the bundled synthetic sample scene in ``resources/sample/``.

Proves an installation end to end in seconds without any user data: the sample's optical image (UTM 32N, 3 m)
and SAR (EPSG:4326, 10 m, shifted ~5 m) exercise the whole reprojection path. It uses the bundled
``aligncr-lite`` weights when present, else the ``identity`` baseline with a clear notice (the output then equals
the cloudy input: the plumbing works, the clouds stay). A report (metrics against the sample's cloud-free
reference) is added when the report module is installed and ``--no-report`` is not given.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from engine import RESOURCES
from engine.config import RunConfig
from engine.errors import InputError

NAME = "demo"
HELP = "run cloud removal on the bundled synthetic sample scene"

SAMPLE_DIR = RESOURCES / "sample"
SAMPLE_FILES = {
    "optical": "cloudy.tif",
    "sar": "s1.tif",
    "landcover": "landcover.tif",
    "mask": "cloud_mask.tif",
    "reference": "cloudfree.tif",
}
log = logging.getLogger("engine")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out-dir", type=Path, default=Path("out/demo"), help="output folder (default ./out/demo)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--no-report", action="store_true", help="skip the metrics report")


def sample_config(out_dir: Path, device: str = "auto", report: bool = True) -> RunConfig:
    """The demo's :class:`RunConfig` (also what tests and benchmarks use to run the sample)."""
    paths = {role: SAMPLE_DIR / name for role, name in SAMPLE_FILES.items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise InputError(f"bundled sample is incomplete (run scripts/make_sample.py): missing {missing[0]}")
    return RunConfig(
        optical=paths["optical"],
        sar=paths["sar"],
        landcover=paths["landcover"],
        mask=paths["mask"],
        reference=paths["reference"],
        out=out_dir / "declouded.tif",
        device=device,
        report=(out_dir / "report") if report else None,
    )


def _report_available() -> bool:
    try:
        from engine.report import write_report  # noqa: F401
    except ImportError:
        return False
    return True


def run(args: argparse.Namespace) -> int:
    from engine.commands.run import _run_tqdm
    from engine.stream.mode import BUNDLED, default_model

    want_report = not args.no_report and _report_available()
    if not args.no_report and not want_report:
        log.info("report module not installed: writing the declouded image only")
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = sample_config(out_dir, args.device, report=want_report)
    if default_model() == "identity":
        log.warning(
            "no bundled weights at %s: running the 'identity' baseline, so the output equals the cloudy input "
            "(train or download the bundled weights for real cloud removal)",
            BUNDLED["aligncr-res"].parent,
        )
    code = _run_tqdm(config)
    print(f"demo output: {config.out.resolve()}")
    if code == 0 and config.report is not None:
        summary = headline(config.report / "report.json")
        if summary:
            print(summary)
    return code


def headline(report_json: Path) -> str | None:
    """One line a first-time user can read: the declouded image against the cloudy input, vs the reference."""
    import json

    try:
        metrics = json.loads(report_json.read_text())["metrics"]
        out, cloudy = metrics["output"]["overall"], metrics["cloudy_input"]["overall"]
        inside, inside_in = metrics["output"]["inside_cloud"], metrics["cloudy_input"]["inside_cloud"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if out.get("psnr") is None or cloudy.get("psnr") is None:
        return None
    line = f"vs the cloud-free reference: PSNR {out['psnr']:.2f} dB (cloudy input {cloudy['psnr']:.2f} dB)"
    line += f", SSIM {out['ssim']:.3f} ({cloudy['ssim']:.3f})"
    if inside.get("psnr") is not None and inside_in.get("psnr") is not None:
        line += f"; under clouds PSNR {inside['psnr']:.2f} dB ({inside_in['psnr']:.2f} dB)"
    return line
