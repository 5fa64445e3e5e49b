"""The wheel ships the model card templates, and an installed copy finds them."""

import subprocess
import sys
import zipfile

import pytest


@pytest.mark.slow  # builds a wheel
def test_wheel_ships_templates_and_installed_package_finds_them(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), "."],
        capture_output=True,
        text=True,
        cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]),
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    wheel = next((tmp_path / "dist").glob("hf_mergeguard-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "hf_mergeguard/model_card_templates/modelcard.md" in names
    assert not any(name.startswith("tests/") for name in names)

    # "Install" the wheel into an empty folder and import from there only (not from the checkout).
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    probe = "import hf_mergeguard, hf_mergeguard.card.templates as t; print(hf_mergeguard.__file__); print(t.template_path('modelcard.md'))"
    completed = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=str(tmp_path), env={"PYTHONPATH": str(site), "PATH": ""}
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    package_file, template = completed.stdout.split()
    assert package_file.startswith(str(site)) and template.startswith(str(site))
