"""The chart part of scripts/release.sh, with the Helm v4 engine (helm-python-sdk, run by
.venv-helm's python; no helm binary). docs/releasing.md.

    release_chart.py package CHART_DIR OUT_DIR VERSION [--image REPO --digest sha256:...]
        copies the chart to OUT_DIR/chart/, writes REPO and the digest into the copy's
        values.yaml (image.repository, image.digest), lints it, checks that its Deployment
        renders exactly REPO@DIGEST, packages it; prints the archive's path
    release_chart.py push ARCHIVE oci://HOST/PATH [--plain-http]
        pushes the archive and prints the digest the registry resolves NAME:VERSION to
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

import yaml
from helm_python import registry
from helm_python.chart import Chart, lint, package


def pin_image(values: Path, repository: str, digest: str) -> None:
    """Sets image.repository and image.digest in values.yaml, keeping its comments."""
    lines = values.read_text().splitlines(keepends=True)
    start = lines.index("image:\n")
    end = next(i for i in range(start + 1, len(lines)) if re.match(r"^\S", lines[i]))
    done = set()
    for i in range(start + 1, end):
        for key, value in (("repository", repository), ("digest", digest)):
            if re.match(rf"^  {key}:", lines[i]):
                lines[i] = f'  {key}: "{value}"\n'
                done.add(key)
    if done != {"repository", "digest"}:
        raise SystemExit(f"release: {values} has no image.repository or image.digest line")
    values.write_text("".join(lines))


def package_chart(args: argparse.Namespace) -> None:
    staged = Path(args.out) / "chart" / Path(args.chart).name
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(args.chart, staged)
    if args.image:
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", args.digest or ""):
            raise SystemExit(f"release: not an image digest: {args.digest!r}")
        pin_image(staged / "values.yaml", args.image, args.digest)
    result = lint(staged)
    if result.get("errors"):
        raise SystemExit(f"release: helm lint of the chart failed: {result}")
    with Chart.load(staged) as chart:
        if chart.version != args.version:
            raise SystemExit(f"release: Chart.yaml says {chart.version}, releasing {args.version}")
        rendered = chart.render({}, name="kekeeper", namespace="kekeeper-system")
    deployment = next(d for path, text in rendered.items() if not path.endswith("NOTES.txt")
                      for d in yaml.safe_load_all(text) if d and d.get("kind") == "Deployment")
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    expected = f"{args.image}@{args.digest}" if args.image else None
    if expected and image != expected:
        raise SystemExit(f"release: the packaged chart deploys {image}, not {expected}")
    print(package(staged, destination=args.out))


def push_chart(args: argparse.Namespace) -> None:
    with Chart.load_archive(Path(args.archive).read_bytes()) as chart:
        name, version = chart.name, chart.version
    registry.push(args.archive, args.remote, plain_http=args.plain_http)
    with registry.RegistryClient(plain_http=args.plain_http) as client:
        ref = f"{args.remote}/{name}"
        if version not in client.tags(ref):
            raise SystemExit(f"release: {ref} has no tag {version} after the push")
        print(client.resolve(f"{ref}:{version}")["digest"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    pkg = sub.add_parser("package")
    pkg.add_argument("chart")
    pkg.add_argument("out")
    pkg.add_argument("version")
    pkg.add_argument("--image")
    pkg.add_argument("--digest")
    push = sub.add_parser("push")
    push.add_argument("archive")
    push.add_argument("remote")
    push.add_argument("--plain-http", action="store_true")
    args = parser.parse_args()
    {"package": package_chart, "push": push_chart}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
