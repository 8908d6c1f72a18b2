"""Minimal valid wheels for the tests of kit bundle and kit kernel: pip selects and installs them like real ones."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def fake_wheel(folder: Path, name: str, version: str, tag: str = "py3-none-any") -> Path:
    """Write ``<name>-<version>-<tag>.whl`` holding a module ``name`` that sets ``FAKE = True``."""
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": "FAKE = True\n",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}/WHEEL": f"Wheel-Version: 1.0\nGenerator: kit-tests\nRoot-Is-Purelib: true\nTag: {tag}\n"}
    record = "".join(f"{path},{_record_hash(text.encode())},{len(text.encode())}\n" for path, text in files.items())
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w") as z:
        for member, text in {**files, f"{dist}/RECORD": record + f"{dist}/RECORD,,\n"}.items():
            z.writestr(member, text)
    return path


def installed_wheel(folder: Path, name: str, tag: str = "py3-none-any") -> Path:
    """A wheel of the distribution ``name`` installed here, its own files (compiled modules included), tagged
    ``tag`` so that pip takes it for the CPython versions kit bundle asks for; it installs into this interpreter only.
    For a kernel test whose images need the real package (simplejpeg decodes ISIC 2024's JPEGs)."""
    import importlib.metadata

    dist = importlib.metadata.distribution(name)
    info = f"{name}-{dist.version}.dist-info"
    files = {}
    for f in dist.files:
        if f.suffix == ".pyc" or f.parts[0].endswith(".dist-info"):
            continue
        files[str(f)] = Path(dist.locate_file(f)).read_bytes()
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {dist.version}\n".encode()
    files[f"{info}/WHEEL"] = f"Wheel-Version: 1.0\nGenerator: kit-tests\nRoot-Is-Purelib: false\nTag: {tag}\n".encode()
    record = "".join(f"{path},{_record_hash(data)},{len(data)}\n" for path, data in files.items())
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{dist.version}-{tag}.whl"
    with zipfile.ZipFile(path, "w") as z:
        for member, data in {**files, f"{info}/RECORD": (record + f"{info}/RECORD,,\n").encode()}.items():
            z.writestr(member, data)
    return path
