"""The C reference core (``firmware/``, docs/firmware.md) through ctypes: its HAL and
configuration structures, loading a built library, and building one from a source checkout
(``make -C firmware host``). Used by the vector replay (``tests/c_core.py``) and by the
simulated SmartBall's ``--sim-firmware=c`` (``smartball_sim.firmware.c_firmware``)."""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

#: The core's sources, in a source checkout (the simulator is installed from one).
FIRMWARE_DIR = Path(__file__).resolve().parents[3] / "firmware"
#: A prebuilt core to load instead of building one (CI's sanitizer and coverage builds).
LIB_ENV = "SMARTBALL_C_CORE_LIB"
PAGE = 4096

ERASE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32)
WRITE = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32
)
READ = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32)
NOW = ctypes.CFUNCTYPE(ctypes.c_uint64, ctypes.c_void_p)
NOTIFY = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint16)
PERSIST = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32)
RESET = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
EVENT = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_uint8, ctypes.c_uint8, ctypes.c_uint32, ctypes.c_uint32
)
SHA_INIT = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
SHA_UPDATE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint32)
SHA_FINAL = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
ED25519_VERIFY = ctypes.CFUNCTYPE(
    ctypes.c_int,
    ctypes.c_void_p,
    ctypes.c_uint32,
    ctypes.c_void_p,
    ctypes.c_uint32,
    ctypes.c_void_p,
)
PERSIST_SIGNED = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_void_p
)
PERSIST_CONFIRMED = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_uint32)
#: flash_erase_page's answer for an erase that starts later (smartball_core.h).
FLASH_DEFERRED = 1
#: The core's event kinds (smartball_core.h, enum sb_event).
EV_COMMAND, EV_HANDLED, EV_ERASED, EV_ACCEPTED = 1, 2, 3, 4
EV_STAGED, EV_VERIFIED, EV_CONFIRMED = 5, 6, 7
#: Trusted key ids a configuration holds (SB_MAX_KEYS); the signed head's size.
MAX_KEYS = 4
HEAD_SIZE = 120


class Hal(ctypes.Structure):
    _fields_ = [
        ("ctx", ctypes.c_void_p),
        ("flash_erase_page", ERASE),
        ("flash_write", WRITE),
        ("flash_read", READ),
        ("now_us", NOW),
        ("notify", NOTIFY),
        ("persist_pending", PERSIST),
        ("reset", RESET),
        ("event", EVENT),
        ("sha256_init", SHA_INIT),
        ("sha256_update", SHA_UPDATE),
        ("sha256_final", SHA_FINAL),
        ("ed25519_verify", ED25519_VERIFY),
        ("persist_signed_pending", PERSIST_SIGNED),
        ("persist_confirmed", PERSIST_CONFIRMED),
    ]


class Config(ctypes.Structure):
    _fields_ = [
        ("window", ctypes.c_uint16),
        ("rx_buffer_chunks", ctypes.c_uint16),
        ("staging_capacity", ctypes.c_uint32),
        ("progressive_erase", ctypes.c_uint8),
        ("fw_version", ctypes.c_uint8 * 3),
        ("active_image_size", ctypes.c_uint32),
        ("active_image_crc32", ctypes.c_uint32),
        ("security_counter", ctypes.c_uint32),
        ("image_state", ctypes.c_uint8),
        ("trusted_keys", ctypes.c_uint8),
        ("trusted_key_id", ctypes.c_uint32 * MAX_KEYS),
        ("test_image_counter", ctypes.c_uint32),
    ]


class MissingCompiler(RuntimeError):
    """No C compiler: the sentence says what to install."""


def build_library(build_dir: Path, target: str = "host") -> Path:
    """``make -C firmware <target>`` into ``build_dir``; the shared library's path."""
    if shutil.which(os.environ.get("CC", "gcc")) is None or shutil.which("make") is None:
        raise MissingCompiler(
            "the C core needs a C compiler and make: install them (Debian: "
            "apt-get install gcc make) or set SMARTBALL_C_CORE_LIB to a built core"
        )
    subprocess.run(
        ["make", "-s", "-C", str(FIRMWARE_DIR), target, f"BUILD={build_dir}"],
        check=True,
        capture_output=True,
        text=True,
    )
    return build_dir / target / "libsmartball_core.so"


def load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    lib.sb_core_size.restype = ctypes.c_size_t
    lib.sb_init.argtypes = [ctypes.c_void_p, ctypes.POINTER(Hal), ctypes.POINTER(Config)]
    lib.sb_rx.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.sb_flash_done.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.sb_flash_started.argtypes = [ctypes.c_void_p]
    lib.sb_tx_complete.argtypes = [ctypes.c_void_p]
    lib.sb_link_lost.argtypes = [ctypes.c_void_p]
    lib.sb_poll.argtypes = [ctypes.c_void_p]
    lib.sb_next_deadline_us.argtypes = [ctypes.c_void_p]
    lib.sb_next_deadline_us.restype = ctypes.c_uint64
    lib.sb_state.argtypes = [ctypes.c_void_p]
    lib.sb_state.restype = ctypes.c_uint8
    lib.sb_status.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]
    lib.sb_encode.argtypes = [
        ctypes.c_char_p,
        ctypes.c_uint8,
        ctypes.POINTER(ctypes.c_uint32),
        ctypes.c_char_p,
        ctypes.c_uint16,
    ]
    lib.sb_encode.restype = ctypes.c_uint16
    lib.sb_parse_command.argtypes = [
        ctypes.c_uint8,
        ctypes.c_char_p,
        ctypes.c_uint16,
        ctypes.POINTER(ctypes.c_uint32),
    ]
    lib.sb_frame.argtypes = [ctypes.c_char_p, ctypes.c_uint8, ctypes.c_char_p, ctypes.c_uint16]
    lib.sb_frame.restype = ctypes.c_uint16
    return lib


def default_library() -> Path:
    """The core built from this checkout's sources, once per version of them: in the user's
    cache (``$XDG_CACHE_HOME/smartball/c-core/<hash of the sources>``), built in a
    directory of its own and renamed into place, so two runs never see half a build."""
    sources = sorted(FIRMWARE_DIR.glob("src/*.c")) + sorted(FIRMWARE_DIR.glob("include/*.h"))
    sources.append(FIRMWARE_DIR / "Makefile")
    missing = [s for s in sources if not s.is_file()]
    if missing or len(sources) < 3:
        raise MissingCompiler(
            f"the C core's sources are not at {FIRMWARE_DIR} (a source checkout has them); "
            f"pass a built core with --sim-firmware-lib or {LIB_ENV}"
        )
    digest = hashlib.sha256(b"".join(s.read_bytes() for s in sources)).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    home = cache / "smartball" / "c-core" / digest
    library = home / "host" / "libsmartball_core.so"
    if library.is_file():
        return library
    home.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f"{digest}.", dir=home.parent))
    try:
        build_library(building)
        try:
            building.rename(home)
        except OSError:
            if not library.is_file():  # not another run's build that won the race
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return library


def library_for(path: str | Path | None) -> Path:
    """The core to load: ``path``, else SMARTBALL_C_CORE_LIB, else this checkout's build."""
    chosen = path or os.environ.get(LIB_ENV)
    if chosen:
        if not Path(chosen).is_file():
            raise MissingCompiler(f"{chosen}: no such file (a built libsmartball_core.so)")
        return Path(chosen)
    return default_library()
