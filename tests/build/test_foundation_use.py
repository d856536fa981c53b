"""The executables do not link the full Foundation library (libFoundation.so), only FoundationEssentials; swift-otel,
which needs it, is in libNeutrinoOTLP.so, loaded only by a process that traces (docs/architecture.md, "Tracing";
bench/README.md, twenty-third round).

Linking libFoundation loads FoundationInternationalization and ICU with it, and Hummingbird's date header then reads
ICU's time-zone data: a Hummingbird hello-world idles at 21 MB, 29 MB with libFoundation merely linked. An
`import Foundation` in any module of the link (ours or a dependency's) is enough to bring it back, as is any call into
it; this names the binary and what it takes from the library.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / ".build" / "debug"


def tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    swift = shutil.which("swift")
    beside = Path(os.path.realpath(swift)).parent / f"llvm-{name}" if swift else None
    return str(beside) if beside and beside.exists() else None


def needed(path: Path) -> list[str]:
    readelf = tool("readelf")
    if readelf is None:
        pytest.skip("no readelf")
    out = subprocess.run([readelf, "-d", str(path)], capture_output=True, text=True, timeout=60, check=True).stdout
    return [line.rsplit("[", 1)[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line]


@pytest.mark.parametrize("name", ["neutrino-gateway", "neutrino-worker"])
def test_the_executables_link_foundation_essentials_only(name: str) -> None:
    binary = BUILD / name
    if not binary.exists():
        pytest.skip(f"{binary} is not built (make build)")
    libraries = needed(binary)
    assert "libFoundationEssentials.so" in libraries, libraries
    loaded = [lib for lib in libraries if lib in ("libFoundation.so", "libFoundationInternationalization.so", "lib_FoundationICU.so")]
    assert not loaded, (
        f"{name} links {loaded}: some module of its link imports Foundation (use FoundationEssentials, the standard "
        f"library or NeutrinoThreads), or calls into it; `readelf -p .swift1_autolink_entries` on its objects names "
        f"the module ({sorted(libraries)})"
    )


def test_the_tracing_library_is_built_beside_them_and_holds_swift_otel() -> None:
    library = BUILD / "libNeutrinoOTLP.so"
    if not (BUILD / "neutrino-gateway").exists():
        pytest.skip("not built (make build)")
    assert library.exists(), "swift build builds the NeutrinoOTLP product beside the executables"
    assert "libFoundation.so" in needed(library)
    nm = tool("nm")
    if nm is None:
        pytest.skip("no nm")
    exported = subprocess.run([nm, "-D", "--defined-only", str(library)], capture_output=True, text=True, timeout=120, check=True).stdout
    for function in ("neutrino_otlp_start", "neutrino_otlp_run", "neutrino_otlp_shutdown", "neutrino_otlp_span_start", "neutrino_otlp_span_end"):
        assert f" T {function}\n" in exported, function
