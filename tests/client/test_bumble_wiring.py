"""How users choose the Bumble link: ``smartball-ota ... --sim --sim-link bumble`` and
``pytest --device=sim --sim-link=bumble``, and the one sentence without bumble."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pytest_smartball.cli import main
from pytest_smartball.contract import codec as p
from pytest_smartball.targets.bumble import INSTALL_HINT
from smartball_sim.make_image import FIELD_IMAGE_SIZE, make_image

from ..plugin_sessions import assert_clean_usage_error, run

pytest_plugins = ["pytester"]


def _image(tmp_path: Path, size: int = 20_000) -> tuple[Path, int]:
    data = make_image(size, 1)
    path = tmp_path / "img.bin"
    path.write_bytes(data)
    return path, p.crc32(data)


def test_cli_flashes_the_field_image_over_bumble_under_field_linux(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    image, crc = _image(tmp_path, FIELD_IMAGE_SIZE)
    code = main(
        [
            "flash",
            str(image),
            "--sim",
            "--sim-trust",
            "none",
            "--sim-link",
            "bumble",
            "--faults",
            "field-linux",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert f"Update succeeded: SmartBall (C0:FF:EE:00:00:01) runs {image}." in out
    assert "  ATT MTU        247 (negotiated over Bumble)" in out
    assert f"active image {FIELD_IMAGE_SIZE} bytes, crc32 {crc:08x} (the new image)" in out
    assert "race:1.5s  [not applied]" in out  # the profile's BlueZ-only fault, said so


def test_cli_json_names_the_mtu(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import json

    image, crc = _image(tmp_path)
    code = main(
        ["flash", str(image), "--sim", "--sim-trust", "none", "--sim-link", "bumble", "--json"]
    )
    payload = json.loads(capsys.readouterr().out)
    assert code == 0 and payload["ok"]
    assert payload["att_mtu"] == 247
    assert payload["sim_active_image"] == {"size": 20_000, "crc32": f"{crc:08x}"}


def test_cli_refuses_a_bluez_only_fault_on_bumble(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    image, _ = _image(tmp_path)
    code = main(
        [
            "flash",
            str(image),
            "--sim",
            "--sim-trust",
            "none",
            "--sim-link",
            "bumble",
            "--faults",
            "race:1s",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("smartball-ota: fault 'race:1s': race is a BlueZ host's failure")


def test_cli_without_bumble_says_what_to_install(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "bumble", None)  # import bumble -> ImportError
    image, _ = _image(tmp_path)
    code = main(["info", "--sim", "--sim-trust", "none", "--sim-link", "bumble"])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"smartball-ota: {INSTALL_HINT}"
    assert main(["flash", str(image), "--sim", "--sim-trust", "none", "--sim-link", "bumble"]) == 2


def test_cli_sim_link_needs_sim(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", "--sim-link", "bumble"]) == 2
    assert "--sim-link only works with --sim" in capsys.readouterr().err


PLUGIN_TESTS = """
import pytest

@pytest.mark.asyncio
async def test_update(ota, sim_device, firmware_image):
    result = await ota().run()
    assert result.success, result.error
    assert sim_device.firmware.active.data == firmware_image.data
    assert type(sim_device.link_layer).__name__ == "SmartBallPeripheral"

@pytest.mark.faults("race:1s")
def test_needs_bluez(sim_device):
    raise AssertionError("ran")
"""


def test_plugin_runs_the_device_over_bumble(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_link=PLUGIN_TESTS)
    result = run(inner, "--device=sim", "--sim-link=bumble", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "smartball: simulated SmartBall, *link=bumble (virtual time*",
            "*race is a BlueZ host's failure*",
        ]
    )


def test_plugin_without_bumble_is_one_sentence(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    hidden = inner.mkdir("no_bumble") / "bumble"
    hidden.mkdir()
    (hidden / "__init__.py").write_text("raise ImportError('bumble hidden by the test')\n")
    inner.makepyfile(test_never="def test_never():\n    raise AssertionError('ran')\n")
    monkeypatch.setenv("PYTHONPATH", str(hidden.parent))
    result = run(inner, "--device=sim", "--sim-link=bumble")
    assert_clean_usage_error(result, INSTALL_HINT)


def test_plugin_refuses_bluez_only_sim_faults(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_never="def test_never():\n    raise AssertionError('ran')\n")
    result = run(inner, "--device=sim", "--sim-link=bumble", "--sim-faults=stale-cache")
    assert_clean_usage_error(result, "stale-cache is a BlueZ host's failure")
