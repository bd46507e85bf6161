#!/usr/bin/env python3
"""Axon's chart through the real Helm library (PyPI helm-sdkpy, which embeds Helm's Go code).

  helm.py lint CHART
      Lints the chart; prints Helm's messages; exits 1 when Helm reports an error.
  helm.py install --kubeconfig FILE --namespace NS [--set-json JSON] RELEASE CHART
      Installs the chart (no waiting for pods) and prints the rendered manifest, as Helm recorded it.
  helm.py upgrade --kubeconfig FILE --namespace NS [--set-json JSON] RELEASE CHART
      Upgrades the release to the chart with these values; prints the manifest.

install/render.sh and tests/tests/install.rs use it; no helm binary is needed.
"""
import argparse
import asyncio
import json
import sys

import helm_sdkpy


def lint(args):
    config = helm_sdkpy.Configuration(namespace="default")
    result = asyncio.run(helm_sdkpy.Lint(config).run(args.chart))
    print(json.dumps(result, indent=2))
    # Helm's severities: 1 info, 2 warning, 3 error.
    errors = [m for m in result.get("Messages") or [] if int(m.get("Severity", 0)) >= 3]
    return 1 if errors or result.get("Errors") else 0


def install(args):
    values = json.loads(args.set_json) if args.set_json else {}
    config = helm_sdkpy.Configuration(namespace=args.namespace, kubeconfig=args.kubeconfig)
    # The apiserver validates every object against its OpenAPI schema (disable_openapi_validation=False).
    if args.command == "upgrade":
        action = helm_sdkpy.Upgrade(config).run(
            args.release, args.chart, values=values, wait=False, timeout=120, disable_openapi_validation=False
        )
    else:
        action = helm_sdkpy.Install(config).run(
            args.release,
            args.chart,
            values=values,
            create_namespace=True,
            wait=False,
            timeout=120,
            disable_openapi_validation=False,
        )
    result = asyncio.run(action)
    manifest = result.get("manifest")
    if manifest is None:
        print(json.dumps(result, indent=2), file=sys.stderr)
        print("helm.py: the install result carries no manifest", file=sys.stderr)
        return 1
    sys.stdout.write(manifest)
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("lint")
    p.add_argument("chart")
    for name in ("install", "upgrade"):
        p = sub.add_parser(name)
        p.add_argument("--kubeconfig", required=True)
        p.add_argument("--namespace", required=True)
        p.add_argument("--set-json", default="")
        p.add_argument("release")
        p.add_argument("chart")
    args = parser.parse_args()
    try:
        return lint(args) if args.command == "lint" else install(args)
    except helm_sdkpy.HelmError as e:
        print(f"helm.py {args.command}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
