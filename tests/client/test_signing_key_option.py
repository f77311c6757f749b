"""The plugin's ``--signing-key`` and ``smartball_signer``: the key the release gate signs
its test images with (docs/security.md). Inner pytest runs, as tests/client/test_plugin_*.py do."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pytest_smartball.contract import signing
from pytest_smartball.contract.manifest import key_id_text

from ..plugin_sessions import BASE_ARGS, assert_clean_usage_error

pytest_plugins = ["pytester"]

SHOW_KEY = """
def test_show_key(smartball_signer):
    print("KEY", smartball_signer.key_id.to_bytes(4, "little").hex(), smartball_signer.source)
"""


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess(*BASE_ARGS, "-s", *args, timeout=60)


def test_the_simulator_signs_with_the_test_key_by_default(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_key=SHOW_KEY)
    result = run(inner, "--device=sim")
    assert result.ret == 0, result.stdout.str()
    test_kid = key_id_text(signing.test_trusted_key().key_id)
    result.stdout.fnmatch_lines([f"*KEY {test_kid} the repository's test key*"])


def test_signing_key_gives_the_suite_that_key(inner: pytest.Pytester, tmp_path: Path) -> None:
    key = signing.generate()
    path = tmp_path / "release.pem"
    signing.write_key_pair(key, path)
    inner.makepyfile(test_key=SHOW_KEY)
    result = run(inner, "--device=sim", f"--signing-key={path}")
    assert result.ret == 0, result.stdout.str()
    kid = key_id_text(signing.TrustedKey.of(key.public_key()).key_id)
    result.stdout.fnmatch_lines([f"*KEY {kid} {path}*"])


@pytest.mark.parametrize("content", [None, b"not a key"])
def test_a_signing_key_that_cannot_be_used_is_one_sentence(
    inner: pytest.Pytester, tmp_path: Path, content: bytes | None
) -> None:
    path = tmp_path / "key.pem"
    if content is not None:
        path.write_bytes(content)
    inner.makepyfile(test_key=SHOW_KEY)
    result = run(inner, "--device=sim", f"--signing-key={path}")
    assert_clean_usage_error(result, "--signing-key", str(path))


def test_a_run_that_does_not_sign_never_loads_the_crypto_library() -> None:
    """The plugin lives in other people's environments: loading it (and its fixtures)
    costs them no crypto import; only a test that asks for smartball_signer does."""
    code = (
        "import sys, pytest_smartball.plugin, pytest_smartball.plugin.fixtures; "
        "print('cryptography' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "False", out
