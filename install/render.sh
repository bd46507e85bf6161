#!/usr/bin/env bash
# Regenerates what install/ derives from the code:
#   install/kubernetes/axon/crds/axon-crds.yaml  from crate axon-crds (axon_crds::crds_yaml())
#   install/kubernetes/quick-install.yaml        the chart rendered by the real Helm library (helm-sdkpy)
#                                                 with its defaults plus kubeProxyReplacement=true
# Helm renders against a live apiserver (helm-sdkpy offers no client-only template action), so this runs
# the install test in update mode: it starts the real kube-apiserver 1.20.2 on loopback, installs the chart
# and writes the manifest Helm recorded. The same test, without the update switch, fails when the files are
# stale. Needs root and the cached Kubernetes build (make kube), like make test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/kube-build.sh >/dev/null
cargo build -q -p axon-agent --bin axon-agent  # the test checks config keys against axon-agent --help
AXON_UPDATE_GENERATED=1 cargo test -p axon-tests --test install -- --test-threads=1 \
  chart_crds_match_the_crd_types chart_installs_on_a_real_apiserver_and_quick_install_is_in_sync
echo "render: wrote install/kubernetes/axon/crds/axon-crds.yaml and install/kubernetes/quick-install.yaml"
