"""One version for the binary, the image and the chart: scripts/versions.py check, which
scripts/release.sh also runs, passes on the repository and fails, naming the file, on a copy
where one of the versions differs (docs/releasing.md)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

FILES = ["scripts/versions.py", "Cargo.toml", "charts/kekeeper/Chart.yaml", "CHANGELOG.md",
         "charts/kekeeper/README.md", "docs/installation.md", "README.md"]


def run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(root / "scripts" / "versions.py"), *args],
                          capture_output=True, text=True, check=False)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    for name in FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, tmp_path / name)
    return tmp_path


def test_the_repository_agrees():
    result = run(REPO, "check")
    assert result.returncode == 0, result.stderr
    version = run(REPO, "print").stdout.strip()
    assert result.stdout.strip() == f"versions: all {version}"


@pytest.mark.parametrize("path,old,new,named", [
    ("Cargo.toml", 'version = "{v}"', 'version = "9.9.9"', "Cargo.toml version"),
    ("charts/kekeeper/Chart.yaml", "version: {v}", "version: 9.9.9", "Chart.yaml version"),
    ("charts/kekeeper/Chart.yaml", 'appVersion: "{v}"', 'appVersion: "9.9.9"', "appVersion"),
    ("CHANGELOG.md", "## [{v}]", "## [9.9.9]", "CHANGELOG.md newest entry"),
])
def test_a_differing_version_fails_naming_it(copy: Path, path: str, old: str, new: str,
                                             named: str):
    version = run(REPO, "print").stdout.strip()
    text = (copy / path).read_text()
    assert old.format(v=version) in text
    (copy / path).write_text(text.replace(old.format(v=version), new, 1))
    result = run(copy, "check")
    assert result.returncode == 1
    assert "the versions disagree" in result.stderr
    line = next(l for l in result.stderr.splitlines() if named in l)
    assert "9.9.9" in line, result.stderr


def test_release_and_image_tag_are_checked_too():
    version = run(REPO, "print").stdout.strip()
    assert run(REPO, "check", "--version", version, "--image-tag", version).returncode == 0
    result = run(REPO, "check", "--version", version, "--image-tag", "latest")
    assert result.returncode == 1
    assert "latest       the image tag" in result.stderr


def test_the_chart_readme_block_and_install_commands_follow_chart_yaml(copy: Path):
    readme = copy / "charts/kekeeper/README.md"
    version = run(REPO, "print").stdout.strip()
    readme.write_text(readme.read_text().replace(f"Chart version {version}", "Chart version 0.0.1")
                      + "\n    helm install kekeeper oci://r.example/charts/kekeeper --version 0.0.1\n")
    result = run(copy, "check")
    assert result.returncode == 1
    assert "the version block differs from Chart.yaml" in result.stderr
    assert "`--version 0.0.1` is not the chart's version" in result.stderr
    assert run(copy, "sync").returncode == 0
    assert run(copy, "check").returncode == 0, run(copy, "check").stderr
    assert f"--version {version}\n" in readme.read_text()
