"""Debian's headless Chromium, to check that a report's HTML page shows its figures."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]


def rendered_images(page: Path) -> list[tuple[bool, int, int]]:
    """(loaded, natural width, rendered height) of every image on `page`, once Chromium loaded it."""
    probe = page.with_name(f"probe-{page.name}")
    probe.write_text(
        page.read_text().replace(
            "</body>",
            "<script>window.addEventListener('load', () => { for (const img of document.images) "
            "img.setAttribute('data-rendered', "
            "img.complete + ':' + img.naturalWidth + 'x' + img.clientHeight); "
            "});</script></body>",
        )
    )
    dom = subprocess.run(
        [CHROMIUM, *FLAGS, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120
    ).stdout
    out = []
    for part in dom.split('data-rendered="')[1:]:
        complete, dims = part.split('"')[0].split(":")
        width, height = (int(v) for v in dims.split("x"))
        out.append((complete == "true", width, height))
    return out


def screenshot(page: Path, shot: Path, size: str = "1280,2000") -> Path:
    subprocess.run(
        [CHROMIUM, *FLAGS, f"--screenshot={shot}", f"--window-size={size}", page.as_uri()],
        capture_output=True,
        timeout=120,
    )
    return shot
