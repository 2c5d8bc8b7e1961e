"""Screenshot of the Align-CR dialog, filled in and after a real run, in a real QGIS under Xvfb.

    .venv/bin/python scripts/screenshot_dialog.py [--out docs/screenshot_dialog.png]

Outside QGIS (the driver) it builds the plugin zip, unpacks it into a temporary plugin folder, seeds an isolated
QGIS profile that enables the plugin, and starts ``xvfb-run qgis --code THIS_FILE``. Inside QGIS (the same file,
``ALIGNCR_SCREENSHOT_INNER=1``) it loads the bundled synthetic sample scene (resources/sample, no real data),
opens the dialog from the plugin, checks the environment, picks the layers, runs the default *Mode*
with its model (best: adapted to the scene, only the cloud replaced, checked on the scene's clear
ground — its two check boxes show on and disabled), and grabs the dialog (and the whole screen, for the map with
the result) once the run has finished. The packaged plugin, the QgsTask, the child engine process and the result
styling are therefore all exercised for the picture.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

INNER = "ALIGNCR_SCREENSHOT_INNER"


def driver() -> int:
    import argparse

    root = Path(__file__).resolve().parents[1]  # (no __file__ inside QGIS's --code exec: driver only)

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=root / "docs" / "screenshot_dialog.png")
    parser.add_argument("--timeout", type=int, default=300, help="seconds before giving up")
    args = parser.parse_args()
    sys.path.insert(0, str(root))
    from aligncr_qgis.package import build

    work = Path(tempfile.mkdtemp(prefix="aligncr_shot_"))
    try:
        with zipfile.ZipFile(build(work / "aligncr_qgis.zip")) as zf:
            zf.extractall(work / "plugins")
        ini = work / "profiles" / "profiles" / "default" / "QGIS" / "QGIS3.ini"
        ini.parent.mkdir(parents=True)
        ini.write_text("[PythonPlugins]\naligncr_qgis=true\n\n[qgis]\ncheckVersion=false\nshowTips=false\n")
        venv_python = root / ".venv" / "bin" / "python"
        env = dict(os.environ)
        env.update({
            INNER: "1",
            "ALIGNCR_SHOT_OUT": str(args.out.resolve()),
            "ALIGNCR_SHOT_WORK": str(work),
            "ALIGNCR_SHOT_SAMPLE": str(root / "resources" / "sample"),
            "ALIGNCR_PYTHON": str(venv_python if venv_python.is_file() else sys.executable),
            "QGIS_PLUGINPATH": str(work / "plugins"),
        })
        env.pop("QT_QPA_PLATFORM", None)  # a real X server (Xvfb) this time
        cmd = ["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24", "qgis", "--nologo", "--noversioncheck",
               "--profiles-path", str(work / "profiles"),
               "--code", str(Path(__file__).resolve())]
        # Own session: on a timeout the whole group (xvfb-run, Xvfb, qgis) goes, not just the wrapper.
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            if (work / "inner.log").is_file():
                print((work / "inner.log").read_text(), end="")
            print(f"error: QGIS did not finish in {args.timeout} s", file=sys.stderr)
            return 1
        if (work / "inner.log").is_file():
            print((work / "inner.log").read_text(), end="")
        if not args.out.is_file():
            print(stdout[-3000:], stderr[-3000:], sep="\n")
            print(f"error: no screenshot written (qgis exit code {proc.returncode})", file=sys.stderr)
            return 1
        print(f"wrote {args.out}")
        return 0
    finally:
        if not os.environ.get("ALIGNCR_SHOT_KEEP"):
            shutil.rmtree(work, ignore_errors=True)


def inner() -> None:  # runs inside QGIS, with the real iface
    from qgis.core import QgsApplication, QgsProject, QgsRasterLayer
    from qgis.PyQt.QtCore import QTimer
    from qgis.PyQt.QtGui import QGuiApplication
    from qgis.utils import iface, plugins

    out = Path(os.environ["ALIGNCR_SHOT_OUT"])
    work = Path(os.environ["ALIGNCR_SHOT_WORK"])
    sample = Path(os.environ["ALIGNCR_SHOT_SAMPLE"])
    log = (work / "inner.log").open("w")
    state: dict = {}

    def say(msg: str) -> None:
        log.write(msg + "\n")
        log.flush()

    def quit_qgis() -> None:
        QgsProject.instance().setDirty(False)
        QTimer.singleShot(500, QgsApplication.instance().quit)

    QTimer.singleShot(280_000, quit_qgis)  # never hang the caller
    layers = {}
    for key, name in (("cloudy", "PlanetScope cloudy"), ("s1", "Sentinel-1 VV VH"), ("landcover", "WorldCover"),
                      ("cloud_mask", "Cloud mask"), ("cloudfree", "Cloud-free reference")):
        layer = QgsRasterLayer(str(sample / f"{key}.tif"), name)
        layers[key] = layer
    # The cloud-free reference last (so active), as an analyst loads it: the dialog proposes the cloudy layer and
    # the SAR over it by its own rules (issue 28), so the picture shows its picks, not the script's.
    for key in ("cloudy", "s1", "landcover", "cloud_mask", "cloudfree"):
        QgsProject.instance().addMapLayer(layers[key])
    iface.setActiveLayer(layers["cloudfree"])
    iface.mapCanvas().setExtent(layers["cloudy"].extent())
    dlg = plugins["aligncr_qgis"].show_dialog()
    dlg.open_report_in_browser = False
    dlg.move(250, 60)
    state["dlg"] = dlg

    def fill() -> None:
        proposed = (dlg.optical_combo.currentLayer(), dlg.sar_combo.currentLayer())
        names = [lyr.name() if lyr else None for lyr in proposed]
        say(f"proposed: optical {names[0]}, SAR {names[1]}")
        dlg.landcover_combo.setLayer(layers["landcover"])
        dlg.mask_combo.setLayer(layers["cloud_mask"])
        dlg.reference_combo.setLayer(layers["cloudfree"])
        dlg.output_widget.setFilePath(str(work / "cloudy_declouded.tif"))
        dlg.ndvi_check.setChecked(True)
        dlg.report_check.setChecked(True)
        dlg.qa_check.setChecked(True)
        # the default mode and its model (aligncr-res): only the cloud replaced, adapted, the scene check and the
        # guard (its verdict joins the success message)
        dlg.validate()
        say(f"mode: {dlg.current_mode()}; model: {dlg.model_combo.currentData()}")
        say("issues: " + " | ".join(dlg.issue_messages()))

    def env_done(ok: bool, job: object) -> None:
        say(f"environment checked: ok={ok}")
        QTimer.singleShot(300, start_run)

    def start_run() -> None:
        fill()
        dlg.runFinished.connect(run_done)
        started = dlg.run() is not None
        say(f"run started: {started}")
        if not started:  # still take the picture (it shows why), and never leave QGIS hanging
            QTimer.singleShot(500, grab)

    def run_done(ok: bool) -> None:
        say(f"run finished: ok={ok} status={dlg.status_label.text()}")
        QTimer.singleShot(2500, grab)

    def grab() -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        dlg.raise_()
        dlg.grab().save(str(out))
        screen = QGuiApplication.primaryScreen().grabWindow(0)
        screen.save(str(work / "screen.png"))  # whole screen, for debugging (ALIGNCR_SHOT_KEEP=1 keeps it)
        say(f"saved {out}")
        dlg.close()
        QgsProject.instance().removeAllMapLayers()
        quit_qgis()

    fill()
    dlg.check_environment()
    if dlg.env_task is not None:
        dlg.env_task.done.connect(env_done)
    else:
        QTimer.singleShot(300, start_run)


if os.environ.get(INNER) == "1":
    inner()
elif __name__ == "__main__":
    sys.exit(driver())
