"""`helm` for the README test (tests/release/test_readme.py): the real Helm v4 engine
(helm-python-sdk) behind the part of Helm's command line the README uses,

    helm install NAME CHART --version V [--namespace NS] [--create-namespace] [--set K=V]...

`--set` follows Helm's rules for what the README writes: dots split the key unless escaped
(`eks\\.amazonaws\\.com/role-arn`), `true`/`false` and integers are typed, anything else is a
string. A chart from a registry on 127.0.0.1 is pulled over plain HTTP (the test registry has no
TLS). Anything else is refused, so a README that starts using more of Helm fails loudly here.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

import helm_python


def typed(value: str):
    if value in ("true", "false"):
        return value == "true"
    if re.fullmatch(r"-?[0-9]+", value) and not (len(value) > 1 and value.lstrip("-")[0] == "0"):
        return int(value)
    return value


def set_value(values: dict, assignment: str) -> None:
    key, sep, value = assignment.partition("=")
    if not sep:
        sys.exit(f"helm: --set {assignment!r}: expected KEY=VALUE")
    path = [part.replace("\\.", ".") for part in re.split(r"(?<!\\)\.", key)]
    node = values
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = typed(value)


def main() -> None:
    parser = argparse.ArgumentParser(prog="helm")
    commands = parser.add_subparsers(dest="command", required=True)
    install = commands.add_parser("install")
    install.add_argument("name")
    install.add_argument("chart")
    install.add_argument("--version", required=True)
    install.add_argument("--namespace", "-n", default="default")
    install.add_argument("--create-namespace", action="store_true")
    install.add_argument("--set", action="append", default=[])
    args = parser.parse_args()

    values: dict = {}
    for assignment in args.set:
        set_value(values, assignment)
    plain_http = args.chart.startswith("oci://127.0.0.1:")
    kubeconfig = os.environ.get("KUBECONFIG")
    with helm_python.Config(kubeconfig_path=kubeconfig, namespace=args.namespace) as helm:
        result = helm.install(args.chart, args.name, values, chart_version=args.version,
                              plain_http=plain_http, create_namespace=args.create_namespace)
    print(f"NAME: {args.name}\nNAMESPACE: {args.namespace}\n"
          f"CHART: {result['chart_name']} {result['chart_version']}\nSTATUS: deployed")


if __name__ == "__main__":
    main()
