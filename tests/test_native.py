"""biper.native: building C sources on first use, the ABI check and the fallback reasons."""

import ctypes
import logging

import pytest

from biper import native

SOURCE_OK = "int demo_abi(void) { return 3; }\nint demo_add(int a, int b) { return a + b; }\n"


def _declare(lib):
    lib.demo_add.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.demo_add.restype = ctypes.c_int


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("BIPER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("BIPER_DISABLE_KERNELS", raising=False)
    if native.compiler() is None:
        pytest.skip("no C compiler")
    return tmp_path


def _library(tmp_path, text, abi=3):
    src = tmp_path / "demo.c"
    src.write_text(text)
    return native.NativeLibrary(src, abi, "demo_abi", _declare, "demo kernels", logging.getLogger("biper.test"))


def test_builds_once_and_calls(cache):
    lib = _library(cache, SOURCE_OK)
    loaded = lib.load()
    assert loaded is not None and loaded.demo_add(2, 40) == 42
    first = lib.state["path"]
    lib.reset()
    assert lib.load() is not None and lib.state["path"] == first  # cached: same file, no rebuild
    assert first.parent == cache / "cache" and first.name.startswith("demo-")


@pytest.mark.parametrize("text,abi,reason", [
    ("int demo_abi(void) { return 3; }\nint demo_add(int a, int b) { return a + ; }\n", 3, "compiling demo.c failed"),
    (SOURCE_OK, 4, "kernel ABI 3 != expected 4"),
], ids=["compile-error", "abi-mismatch"])
def test_failures_fall_back_with_one_line(cache, caplog, text, abi, reason):
    caplog.set_level(logging.WARNING, logger="biper.test")
    lib = _library(cache, text, abi)
    assert lib.load() is None and lib.load() is None
    assert reason in lib.state["reason"]
    lines = [r.getMessage() for r in caplog.records if "demo kernels unavailable" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0] and reason in lines[0]


def test_disabled_by_environment(cache, monkeypatch):
    monkeypatch.setenv("BIPER_DISABLE_KERNELS", "1")
    lib = _library(cache, SOURCE_OK)
    assert lib.load() is None and lib.state["reason"] == "BIPER_DISABLE_KERNELS is set"
    assert not (cache / "cache").exists() or not any((cache / "cache").iterdir())  # nothing built


def test_cache_key_covers_local_includes(tmp_path):
    """Editing a header the C file includes must change what the build cache is keyed on."""
    from biper.native import source_bytes

    (tmp_path / "part.h").write_text("static int f(void) { return 1; }\n")
    src = tmp_path / "main.c"
    src.write_text('#include <stdint.h>\n#include "part.h"\nint g(void) { return f(); }\n')
    before = source_bytes(src)
    assert b"return 1" in before
    (tmp_path / "part.h").write_text("static int f(void) { return 2; }\n")
    assert source_bytes(src) != before
