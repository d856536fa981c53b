"""What the two executables take from the full Foundation library (libFoundation.so): only the two symbols swift-otel's
own code references (bench/README.md, twenty-third round).

Linking libFoundation loads FoundationInternationalization and ICU with it, and Hummingbird's date header then reads
ICU's time-zone data: a Hummingbird hello-world idles at 21 MB, 29 MB with libFoundation merely linked. swift-otel
keeps it linked; calling into it costs more resident pages again (Foundation's `Thread` and `NSCondition`, the
NSString-backed `contains` and `range(of:)` on start-up paths). Neutrino's own code uses the standard library,
FoundationEssentials and NeutrinoThreads instead. This names any new reference, so that the one left to remove is
swift-otel's.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BINARIES = ("neutrino-gateway", "neutrino-worker")
# swift-otel's OTel+Configuration+EnvironmentVariableRepresentable.swift (OTEL_EXPORTER_OTLP_HEADERS parsing).
SWIFT_OTEL = {
    "$s10Foundation12CharacterSetV22whitespacesAndNewlinesACvgZ",
    "$sSy10FoundationE18trimmingCharacters2inSSAA12CharacterSetV_tF",
}


def tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    swift = shutil.which("swift")
    beside = Path(os.path.realpath(swift)).parent / f"llvm-{name}" if swift else None
    return str(beside) if beside and beside.exists() else None


def dynamic_symbols(nm: str, path: str, defined: bool) -> set[str]:
    out = subprocess.run(
        [nm, "-D", "--defined-only" if defined else "--undefined-only", path],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout
    return {line.split()[-1].split("@")[0] for line in out.splitlines() if line.strip()}


def libfoundation(binary: Path) -> str | None:
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, timeout=60, check=True).stdout
    for line in out.splitlines():
        name, _, rest = line.strip().partition(" => ")
        if name == "libFoundation.so" and rest:
            return rest.split(" (")[0]
    return None


@pytest.mark.parametrize("name", BINARIES)
def test_only_swift_otel_needs_libfoundation(name: str) -> None:
    binary = REPO / ".build" / "debug" / name
    if not binary.exists():
        pytest.skip(f"{binary} is not built (make build)")
    nm = tool("nm")
    if nm is None or shutil.which("ldd") is None:
        pytest.skip("no nm or ldd")
    library = libfoundation(binary)
    if library is None:
        return  # not linked at all: nothing left to keep out
    used = dynamic_symbols(nm, str(binary), defined=False) & dynamic_symbols(nm, library, defined=True)
    assert used & SWIFT_OTEL, "swift-otel no longer needs libFoundation: drop the exception (and see whether it is still linked)"
    extra = sorted(used - SWIFT_OTEL)
    demangled = subprocess.run(["swift", "demangle", "--simplified"], input="\n".join(extra), capture_output=True, text=True).stdout if extra else ""
    assert not extra, (
        f"{name} calls into libFoundation (each call site costs resident pages in every process): use the standard "
        f"library, FoundationEssentials or NeutrinoThreads instead (firstRange(of:) for contains/range(of:), "
        f"trimmingWhitespace(), Monitor, startThread, ChildProcess):\n{demangled or extra}"
    )
