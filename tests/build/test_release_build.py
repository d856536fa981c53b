"""The release build's profile-guided optimisation (Makefile: PGO_*, `make pgo-profile`; bench/README.md).

1. pgo/neutrino.profdata is a profile the toolchain's llvm-profdata reads, of LLVM's IR-level kind, and it covers the
   hot path of a sync call (the gateway's lane exchange, the worker's call lane, the task-log writer).
2. It holds for a checkout at any path: no function is named by its object file's folder (file-private functions
   are named `<file>.swift.o;<symbol>`, which `-static-func-full-module-prefix=false` makes the compiler look up).
3. `make build-release` passes it with the same naming flag, and leaves it out with PGO=0 or an unreadable profile
   (a toolchain whose LLVM is older than the profile's then builds as before, rather than failing).
4. With the profile, the link orders functions by it (lld's --symbol-ordering-file, made from the profile's counts
   by the same recipe), and without it links as before.
5. That lld link packs the relative relocations (DT_RELR) when the C library can load them (glibc 2.36 or newer).
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROFILE = REPO / "pgo" / "neutrino.profdata"


def llvm_profdata() -> str | None:
    swift = shutil.which("swift")
    if swift:
        beside = Path(os.path.realpath(swift)).parent / "llvm-profdata"
        if beside.exists():
            return str(beside)
    return shutil.which("llvm-profdata")


def dry_run(*args: str) -> str:
    """The command lines `make build-release` would run, without running them."""
    out = subprocess.run(
        ["make", "--no-print-directory", "-n", "build-release", *args],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
    ).stdout
    return next(line for line in out.splitlines() if line.startswith("swift build -c release"))


@pytest.fixture(scope="module")
def functions() -> list[str]:
    tool = llvm_profdata()
    if tool is None:
        pytest.skip("no llvm-profdata in the Swift toolchain or on PATH")
    out = subprocess.run(
        [tool, "show", "--all-functions", str(PROFILE)], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert "Instrumentation level: IR" in out, out[:500]
    return [line.strip()[:-1] for line in out.splitlines() if line.startswith("  ") and line.strip().endswith(":")]


def test_profile_covers_the_sync_path(functions: list[str]) -> None:
    assert len(functions) > 1000
    joined = "\n".join(functions)
    for module in ("15NeutrinoGateway", "14NeutrinoWorker", "15NeutrinoTaskLog", "12NeutrinoHTTP", "7NIOCore"):
        assert f"$s{module}" in joined, module
    assert "LaneExchangeHandler" in joined and "CallLane" in joined


def test_profile_names_hold_for_any_checkout_path(functions: list[str]) -> None:
    file_private = [name for name in functions if ".swift.o;" in name]
    assert file_private, "expected file-private functions named <file>.swift.o;<symbol>"
    with_folder = [name for name in functions if "/" in name]
    assert not with_folder, f"names bound to the folder they were built in: {with_folder[:3]}"


def test_release_build_uses_the_profile() -> None:
    if llvm_profdata() is None:
        pytest.skip("no llvm-profdata: the release build leaves the profile out")
    line = dry_run("PGO=1")
    assert f"-ir-profile-use={PROFILE}" in line
    assert "-Xswiftc -Xllvm -Xswiftc -static-func-full-module-prefix=false" in line
    assert "-no-pgo-warn-mismatch" in line


def test_release_link_orders_functions_by_the_profile(tmp_path: Path) -> None:
    swift = shutil.which("swift")
    if llvm_profdata() is None or swift is None or not (Path(os.path.realpath(swift)).parent / "ld.lld").exists():
        pytest.skip("no llvm-profdata or no lld beside swift: the release build links without an order")
    line = dry_run("PGO=1")
    assert "-Xswiftc -use-ld=lld" in line and "--symbol-ordering-file=" in line, line
    # The recipe that makes the order file, run here into a file of the test's own: the profile's functions, one name
    # per line, hottest first, the file-private ones without their object's name.
    out = subprocess.run(["make", "--no-print-directory", "-n", "build-release", "PGO=1"], cwd=REPO, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    recipe = next(line for line in out.splitlines() if "--all-functions --counts" in line)
    order = tmp_path / "order.txt"
    subprocess.run(["bash", "-c", recipe.replace(".build/release-order.txt", str(order))], cwd=REPO, timeout=120, check=True)
    names = order.read_text().split()
    assert len(names) > 1000 and len(names) == len(set(names))
    assert not [n for n in names if ";" in n or "/" in n]
    assert any("NeutrinoGateway" in n for n in names[:2000])
    assert "symbol-ordering" not in dry_run("PGO=0")


def test_release_build_without_the_profile(tmp_path: Path) -> None:
    assert "profile" not in dry_run("PGO=0")
    assert "profile" not in dry_run(f"PGO_PROFILE={tmp_path / 'absent.profdata'}")
    unreadable = tmp_path / "unreadable.profdata"
    unreadable.write_bytes(b"not a profile")
    assert "profile" not in dry_run(f"PGO_PROFILE={unreadable}")


def glibc_loads_relr() -> bool:
    name, version = platform.libc_ver()
    return name == "glibc" and tuple(int(p) for p in version.split(".")[:2]) >= (2, 36)


def test_release_link_packs_relative_relocations() -> None:
    swift = shutil.which("swift")
    if llvm_profdata() is None or swift is None or not (Path(os.path.realpath(swift)).parent / "ld.lld").exists():
        pytest.skip("no llvm-profdata or no lld beside swift: the release build links with the default linker")
    line = dry_run("PGO=1")
    if glibc_loads_relr():
        assert "-Xlinker -z -Xlinker pack-relative-relocs" in line, line
    else:
        assert "pack-relative-relocs" not in line, line
    assert "pack-relative-relocs" not in dry_run("PGO=0")
