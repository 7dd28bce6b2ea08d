"""Deployment files: lint, schema-validate, and cross-check them against the code."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

import apievents.common.metrics  # noqa: F401 - registers every metric family
from apievents.cli import _parser

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
CUSTOM_KINDS = {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PrometheusRule"}
KUSTOMIZE_KINDS = {"Kustomization", "Component"}


def documents() -> list[tuple[Path, dict[str, Any]]]:
    """Every whole manifest; overlay patches are partial by design and left out."""
    patches = set()
    for k in (DEPLOY / "k8s").rglob("kustomization.yaml"):
        spec = yaml.safe_load(k.read_text())
        patches |= {(k.parent / p["path"]).resolve() for p in spec.get("patches", [])}
    out = []
    for path in sorted((DEPLOY / "k8s").rglob("*.yaml")):
        if path.resolve() not in patches:
            out += [(path, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def manifests(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in documents() if d.get("kind") == kind]


def exported_samples() -> set[str]:
    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_count", "_sum"]}
    return {
        family.name + suffix
        for family in REGISTRY.collect()
        if family.name.startswith("apievents_")
        for suffix in suffixes[family.type]
    }


def test_yamllint_is_clean() -> None:
    done = subprocess.run(
        [BIN / "yamllint", "-c", ROOT / ".yamllint", DEPLOY], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_core_manifests_pass_kubernetes_validate(tmp_path: Path) -> None:
    checked = 0
    for i, (path, doc) in enumerate(documents()):
        if doc["kind"] in CUSTOM_KINDS | KUSTOMIZE_KINDS:
            continue
        single = tmp_path / f"{i}-{path.name}"
        single.write_text(yaml.safe_dump(doc))
        done = subprocess.run(
            [BIN / "kubernetes-validate", "--strict", "--quiet", single],
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, f"{path}: {done.stdout}{done.stderr}"
        checked += 1
    assert checked >= 10


def test_custom_resources_have_the_expected_shape() -> None:
    (so,) = manifests("ScaledObject")
    assert so["spec"]["scaleTargetRef"]["name"] == "apievents-worker"
    assert so["spec"]["triggers"][0]["metadata"]["queueName"] == "apievents.jobs"
    (hpa,) = manifests("HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "apievents-worker"
    (sm,) = manifests("ServiceMonitor")
    (svc,) = [s for s in manifests("Service") if s["metadata"]["name"] == "apievents-metrics"]
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"]


def test_deployments_probe_health_and_outlive_graceful_shutdown() -> None:
    (config,) = manifests("ConfigMap")
    shutdown = float(config["data"]["APIEVENTS_SHUTDOWN_TIMEOUT"])
    commands = set(_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr]
    names = set()
    for dep in manifests("Deployment"):
        spec = dep["spec"]["template"]["spec"]
        (container,) = spec["containers"]
        names.add(container["args"][0])
        assert container["args"][0] in commands
        assert spec["terminationGracePeriodSeconds"] > shutdown
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert {"requests", "limits"} <= set(container["resources"])
        assert spec["securityContext"]["runAsNonRoot"] is True
    assert names == {"producer", "committer", "worker", "api"}
    assert {
        p["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"]
        for p in manifests("PodDisruptionBudget")
    } == {f"apievents-{n}" for n in names}


def pod_specs() -> list[tuple[str, dict[str, Any]]]:
    """Every pod template: the Deployments' and the migration Job's."""
    return [
        (d["metadata"]["name"], d["spec"]["template"]["spec"])
        for kind in ("Deployment", "Job")
        for d in manifests(kind)
    ]


def test_every_pod_runs_without_a_token_and_with_the_default_seccomp_profile() -> None:
    specs = pod_specs()
    assert {name for name, _ in specs} >= {"apievents-worker", "apievents-migrate"}
    for name, spec in specs:
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["securityContext"]["runAsNonRoot"] is True, name


def test_the_base_ships_no_secret_and_the_example_overlay_generates_one() -> None:
    base = DEPLOY / "k8s" / "base"
    for path in base.glob("*.yaml"):
        kinds = {d.get("kind") for d in yaml.safe_load_all(path.read_text()) if d}
        assert "Secret" not in kinds, path
    assert "secretGenerator" not in (base / "kustomization.yaml").read_text()
    example = yaml.safe_load((DEPLOY / "k8s/overlays/example/kustomization.yaml").read_text())
    (generated,) = example["secretGenerator"]
    assert generated["name"] == "apievents"
    assert {lit.split("=", 1)[0] for lit in generated["literals"]} == {
        "APIEVENTS_DATABASE_URL",
        "APIEVENTS_BROKER_URL",
    }


def test_workers_may_reach_only_public_addresses_on_80_and_443() -> None:
    (config,) = manifests("ConfigMap")
    assert config["data"]["APIEVENTS_DENY_PRIVATE_ENDPOINTS"] == "1"
    policies = {p["metadata"]["name"]: p for p in manifests("NetworkPolicy")}
    worker = policies["apievents-worker-egress"]["spec"]
    assert worker["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "apievents-worker"}
    assert worker["policyTypes"] == ["Egress"]
    public = [rule for rule in worker["egress"] if any("ipBlock" in t for t in rule["to"])]
    (rule,) = public
    assert sorted(p["port"] for p in rule["ports"]) == [80, 443]
    blocks = {t["ipBlock"]["cidr"]: set(t["ipBlock"]["except"]) for t in rule["to"]}
    assert {
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "100.64.0.0/10",
        "168.63.129.16/32",
    } <= blocks["0.0.0.0/0"]
    assert {"fc00::/7", "fe80::/10", "64:ff9b::/96", "2002::/16", "::ffff:0:0/96"} <= blocks["::/0"]
    others = {p["port"] for r in worker["egress"] if r not in public for p in r["ports"]}
    assert others == {53, 5432, 5672}  # DNS, the database, the broker
    core = policies["apievents-core-egress"]["spec"]
    (selector,) = core["podSelector"]["matchExpressions"]
    assert set(selector["values"]) == {
        f"apievents-{n}" for n in ("producer", "committer", "api", "migrate")
    }
    assert {p["port"] for r in core["egress"] for p in r["ports"]} == {53, 5432, 5672}
    assert all("ipBlock" not in t for r in core["egress"] for t in r["to"])


def test_dashboard_and_alerts_use_only_exported_metrics() -> None:
    exported = exported_samples()
    dashboard = (DEPLOY / "grafana" / "dashboards" / "apievents.json").read_text()
    json.loads(dashboard)
    (rule,) = manifests("PrometheusRule")
    exprs = " ".join(r["expr"] for g in rule["spec"]["groups"] for r in g["rules"])
    for source, text in (("dashboard", dashboard), ("alerts", exprs)):
        used = set(re.findall(r"\bapievents_[a-z_]+\b", text))
        assert used, source
        assert used <= exported, f"{source} uses unexported {sorted(used - exported)}"
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    ops = (ROOT / "docs" / "operations.md").read_text()
    for alert in alerts:
        assert f"### {alert}" in ops, f"docs/operations.md does not explain {alert}"


def test_dockerfile_is_multi_stage_non_root_with_apievents_entrypoint() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2
    (user,) = re.findall(r"^USER (\S+)", text, re.M)
    assert not user.startswith(("0", "root"))
    assert re.search(r'^ENTRYPOINT \["apievents"\]', text, re.M)
    for folder in ("apievents", "api", "common", "producer", "worker", "committer"):
        assert f"COPY {folder} " in text


def test_the_api_is_deployed_like_the_services() -> None:
    (dep,) = [d for d in manifests("Deployment") if d["metadata"]["name"] == "apievents-api"]
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["APIEVENTS_API_HOST"] == "0.0.0.0"
    (port,) = container["ports"]
    assert int(env["APIEVENTS_API_PORT"]) == port["containerPort"]
    (svc,) = [s for s in manifests("Service") if s["metadata"]["name"] == "apievents-api"]
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["ports"][0]["targetPort"] == port["name"]
    assert container["readinessProbe"]["httpGet"]["port"] == port["name"]
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]["api"]
    assert compose["command"] == ["api"] and compose["environment"]["APIEVENTS_API_HOST"]


def test_compose_runs_the_full_stack() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "rabbitmq", "producer", "committer", "prometheus", "grafana"} <= set(
        services
    )
    assert sum(1 for s in services.values() if s.get("command") == ["worker"]) == 2
    for name in ("producer", "committer", "worker-1", "worker-2"):
        env = services[name]["environment"]
        assert {"APIEVENTS_DATABASE_URL", "APIEVENTS_BROKER_URL", "APIEVENTS_METRICS_PORT"} <= set(
            env
        )
    grafana = services["grafana"]
    assert grafana["environment"].get("GF_AUTH_ANONYMOUS_ENABLED", "false") == "false"
    for name in ("grafana", "prometheus"):  # no authentication of their own: this host only
        assert all(p.startswith("127.0.0.1:") for p in services[name].get("ports", [])), name
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = prom["scrape_configs"][0]["static_configs"][0]["targets"]
    assert {t.split(":")[0] for t in targets} == {"producer", "committer", "worker-1", "worker-2"}


@pytest.mark.parametrize(
    "path", sorted(str(p.relative_to(ROOT)) for p in (DEPLOY / "k8s").rglob("kustomization.yaml"))
)
def test_kustomizations_name_files_that_exist(path: str) -> None:
    file = ROOT / path
    k = yaml.safe_load(file.read_text())
    for entry in (
        k.get("resources", []) + k.get("components", []) + [p["path"] for p in k.get("patches", [])]
    ):
        assert (file.parent / entry).exists(), entry
    for gen in k.get("configMapGenerator", []):
        for f in gen["files"]:
            assert (file.parent / f.split("=", 1)[-1]).exists(), f
