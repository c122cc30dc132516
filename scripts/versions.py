#!/usr/bin/env python3
"""One version for the binary, the image and the chart (docs/releasing.md).

    scripts/versions.py check [--version V] [--image-tag T]   exit 1 naming every disagreement
    scripts/versions.py sync                                   write the docs' version lines
    scripts/versions.py print                                  the version (Cargo.toml's)

`check` compares Cargo.toml's `version` (what `kekeeper --version` prints), Chart.yaml's
`version` and `appVersion` (the image tag the chart deploys), the newest released entry of
CHANGELOG.md (the first `## [X.Y.Z]` heading; `## [Unreleased]` above it is allowed), the
chart README's generated version block, and every `--version X.Y.Z` of a Helm command in the
install docs; with --version (scripts/release.sh passes the version it was asked to release)
and --image-tag (the tag it gives the image) those too. `sync` writes the generated block and
the `--version` of the install commands from Chart.yaml. Standard library only.
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CARGO = ROOT / "Cargo.toml"
CHART = ROOT / "charts" / "kekeeper" / "Chart.yaml"
CHANGELOG = ROOT / "CHANGELOG.md"
CHART_README = ROOT / "charts" / "kekeeper" / "README.md"
# Pages whose Helm commands install a released chart with `--version X.Y.Z`.
INSTALL_DOCS = [CHART_README, ROOT / "docs" / "installation.md", ROOT / "README.md"]

BEGIN = "<!-- BEGIN versions: generated from Chart.yaml by scripts/versions.py sync; do not edit -->"
END = "<!-- END versions -->"
SEMVER = r"[0-9]+\.[0-9]+\.[0-9]+(?:-[0-9A-Za-z.-]+)?"
HELM_VERSION = re.compile(r"(--version[ =])(" + SEMVER + r")\b")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def cargo_version() -> str:
    return tomllib.loads(CARGO.read_text())["package"]["version"]


def chart_field(name: str) -> str:
    """A top-level scalar of Chart.yaml (`version: 0.3.0` or `appVersion: "0.3.0"`)."""
    match = re.search(rf'^{name}:\s*"?([^"\s#]+)"?\s*(?:#.*)?$', CHART.read_text(), re.M)
    if not match:
        raise SystemExit(f"versions: {rel(CHART)} has no top-level `{name}:`")
    return match.group(1)


def changelog_version() -> str | None:
    """The newest released entry: the first `## [X.Y.Z]` heading (not `[Unreleased]`)."""
    if not CHANGELOG.exists():
        return None
    for line in CHANGELOG.read_text().splitlines():
        match = re.match(r"^## \[([^\]]+)\]", line)
        if match and match.group(1).lower() != "unreleased":
            return match.group(1)
    return None


def block(version: str, app_version: str) -> str:
    return "\n".join([
        BEGIN,
        f"- Chart version {version}, app version {app_version} (the image tag when `image.tag` and",
        "  `image.digest` are empty). The `kekeeper` binary, its image and this chart share one",
        "  version; what changed is in [CHANGELOG.md](../../CHANGELOG.md).",
        END,
    ])


def readme_block(text: str) -> str | None:
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        return None
    return text[start:end + len(END)]


def check(release: str | None, image_tag: str | None) -> list[str]:
    cargo = cargo_version()
    chart, app = chart_field("version"), chart_field("appVersion")
    found = {
        f"{rel(CARGO)} version (kekeeper --version)": cargo,
        f"{rel(CHART)} version": chart,
        f"{rel(CHART)} appVersion (the image tag the chart deploys)": app,
        f"{rel(CHANGELOG)} newest entry": changelog_version() or "(none)",
    }
    if release is not None:
        found["the version being released"] = release
    if image_tag is not None:
        found["the image tag"] = image_tag
    problems = []
    if len(set(found.values())) != 1:
        lines = "\n".join(f"  {value:<12} {what}" for what, value in found.items())
        problems.append(f"the versions disagree:\n{lines}\n  set them all to one version"
                        " (Cargo.toml, Chart.yaml, a CHANGELOG.md entry), then run"
                        " scripts/versions.py sync")
    text = CHART_README.read_text()
    current = readme_block(text)
    if current is None:
        problems.append(f"{rel(CHART_README)} has no generated version block ({BEGIN} ... {END})")
    elif current != block(chart, app):
        problems.append(f"{rel(CHART_README)}: the version block differs from Chart.yaml;"
                        " run scripts/versions.py sync")
    for doc in INSTALL_DOCS:
        if not doc.exists():
            continue
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            for match in HELM_VERSION.finditer(line):
                if match.group(2) != chart:
                    problems.append(f"{rel(doc)}:{number}: `--version {match.group(2)}` is not"
                                    f" the chart's version {chart}; run scripts/versions.py sync")
    return problems


def sync() -> None:
    chart, app = chart_field("version"), chart_field("appVersion")
    text = CHART_README.read_text()
    current = readme_block(text)
    if current is None:
        raise SystemExit(f"versions: {rel(CHART_README)} has no {BEGIN} ... {END} block to fill")
    CHART_README.write_text(text.replace(current, block(chart, app)))
    for doc in INSTALL_DOCS:
        if doc.exists():
            text = doc.read_text()
            new = HELM_VERSION.sub(lambda m: m.group(1) + chart, text)
            if new != text:
                doc.write_text(new)
                print(f"versions: {rel(doc)}: --version {chart}")
    print(f"versions: {rel(CHART_README)}: chart {chart}, app {app}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    check_cmd = sub.add_parser("check", help="exit 1 when the versions disagree")
    check_cmd.add_argument("--version", dest="release", help="the version being released")
    check_cmd.add_argument("--image-tag", help="the image's tag")
    sub.add_parser("sync", help="write the chart README's version block and install commands")
    sub.add_parser("print", help="print the version (Cargo.toml)")
    args = parser.parse_args()
    if args.command == "print":
        print(cargo_version())
        return 0
    if args.command == "sync":
        sync()
        return 0
    problems = check(args.release, args.image_tag)
    for problem in problems:
        print(f"versions: {problem}", file=sys.stderr)
    if not problems:
        print(f"versions: all {cargo_version()}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
