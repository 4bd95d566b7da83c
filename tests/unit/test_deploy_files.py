"""Deployment files: docker-compose.yml, the Dockerfiles and the Kubernetes manifests.

Tools are used where present and the test says so when skipping: `docker compose config`
(the docker CLI with the compose plugin; no engine needed), `kubectl kustomize` (offline) and
the kubernetes-validate package (the Kubernetes OpenAPI schemas, shipped in the package, so no
network). The structural checks need only PyYAML.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
K8S = ROOT / "deploy" / "k8s"
NAMESPACE = "streamrec"
PLACEHOLDER = "CHANGE_ME"
K8S_VERSION = "1.30"  # oldest Kubernetes the manifests are checked against (HPA v2, PDB v1)


# --- docker compose --------------------------------------------------------------------------


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _has_compose() -> bool:
    if shutil.which("docker") is None:
        return False
    r = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True,
                       timeout=60, check=False)  # fmt: skip
    return r.returncode == 0


@pytest.mark.skipif(not _has_compose(), reason="docker CLI with the compose plugin not installed")
@pytest.mark.parametrize("profile", [[], ["--profile", "train"]])
def test_docker_compose_config_is_valid(profile: list[str]) -> None:
    # `config` resolves and validates the file against the compose spec; no engine needed.
    cmd = ["docker", "compose", "-f", str(COMPOSE), *profile, "config", "-q"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr


def test_compose_services() -> None:
    services = _compose()["services"]
    assert {"kafka", "redis", "topics", "worker", "trainer", "train-agent", "prometheus",
            "grafana"} <= set(services)  # fmt: skip
    # Every bind-mounted path exists.
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("."):
                assert (ROOT / src).exists(), f"{name}: {src} does not exist"
    # Host ports on the loopback interface only.
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name}: {port}"


def test_compose_worker_health_is_readiness() -> None:
    worker = _compose()["services"]["worker"]
    assert "http://127.0.0.1:9108/ready" in " ".join(worker["healthcheck"]["test"])
    assert "models:/var/lib/streamrec/models:ro" in worker["volumes"]


def test_compose_train_agent() -> None:
    agent = _compose()["services"]["train-agent"]
    assert agent["build"]["dockerfile"] == "deploy/Dockerfile.train"
    assert agent["command"] == ["train-agent"]
    assert "models:/var/lib/streamrec/models" in agent["volumes"]  # read-write
    assert {"kafka", "redis"} <= set(agent["depends_on"])
    assert agent["restart"] == "unless-stopped"
    assert "profiles" not in agent


def test_compose_prometheus_loads_the_rules_and_grafana_is_provisioned() -> None:
    services = _compose()["services"]
    prom = services["prometheus"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in prom["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    grafana = services["grafana"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert "./deploy/grafana/dashboards:/etc/grafana/dashboards:ro" in grafana["volumes"]
    assert any(p.endswith(":3000") and p.startswith("127.0.0.1:") for p in grafana["ports"])
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert "GRAFANA_ADMIN_PASSWORD" in grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    providers = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/dashboards/streamrec.yml").read_text()
    )["providers"]
    assert providers[0]["options"]["path"] == "/etc/grafana/dashboards"
    ds = yaml.safe_load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"]
    assert ds[0]["url"] == "http://prometheus:9090"


# --- Dockerfiles -----------------------------------------------------------------------------


def _final_stage(text: str) -> str:
    return re.split(r"^FROM ", text, flags=re.M)[-1]


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.train"])
def test_dockerfile_basics(name: str) -> None:
    text = (ROOT / "deploy" / name).read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    assert not re.search(r"^FROM\s+\S+:latest", text, flags=re.M)
    final = _final_stage(text)
    users = re.findall(r"^USER\s+(\S+)", final, flags=re.M)
    assert users and not users[-1].startswith(("0", "root")), "must run as a non-root user"
    assert users[-1] == "10001:10001"  # the uid both images share on the models volume
    assert 'ENTRYPOINT ["streamrec"]' in final
    for line in re.findall(r"apt-get install[^\n]*", text):
        assert "--no-install-recommends" in line, line


def test_serving_image_is_slim_and_has_a_healthcheck() -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "[train]" not in text and "torch>=" not in text
    assert '! /opt/streamrec/bin/python -c "import torch"' in text  # the build fails with torch
    assert "COPY --from=build /opt/streamrec /opt/streamrec" in text  # multi-stage
    final = _final_stage(text)
    assert re.search(r"^HEALTHCHECK .*\n?.*/ready", final, flags=re.M)
    assert "EXPOSE 9108" in final


def test_training_image() -> None:
    text = (ROOT / "deploy" / "Dockerfile.train").read_text()
    assert '".[train]"' in text
    assert "EXPOSE 9109" in text


# --- Kubernetes ------------------------------------------------------------------------------


def _manifests() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path.name, doc))
    return out


def _by_kind(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for _, d in _manifests() if d["kind"] == kind}


def test_every_manifest_has_the_basics() -> None:
    docs = _manifests()
    kinds = {d["kind"] for _, d in docs}
    assert {"Namespace", "ConfigMap", "Secret", "Deployment", "HorizontalPodAutoscaler",
            "PodDisruptionBudget", "Service", "PersistentVolumeClaim"} <= kinds  # fmt: skip
    for fname, d in docs:
        assert d.get("apiVersion") and d.get("kind"), fname
        assert d["metadata"].get("name"), fname
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == NAMESPACE, (fname, d["kind"])


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == files - {"secret.example.yaml"}


def _containers(dep: dict) -> list[dict]:
    return dep["spec"]["template"]["spec"]["containers"]


def test_deployments_have_probes_resources_and_pinned_images() -> None:
    deps = _by_kind("Deployment")
    assert set(deps) == {"streamrec-worker", "streamrec-train-agent"}
    for name, dep in deps.items():
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == 10001, name
        for c in _containers(dep):
            image = c["image"]
            assert ":" in image and not image.endswith(":latest"), f"{name}: pin {image}"
            assert c.get("livenessProbe") and c.get("readinessProbe"), name
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), (name, kind)
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, name
            refs = {next(iter(e.values()))["name"] for e in c["envFrom"]}
            assert refs == {"streamrec-config", "streamrec-secrets"}, name
        annotations = dep["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true", name


def test_worker_deployment() -> None:
    dep = _by_kind("Deployment")["streamrec-worker"]
    (c,) = _containers(dep)
    assert c["args"] == ["worker"]
    assert {"name": "metrics", "containerPort": 9108, "protocol": "TCP"} in c["ports"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/live", "port": "metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "metrics"}
    assert c["startupProbe"]["httpGet"]["path"] == "/live"
    mount = next(m for m in c["volumeMounts"] if m["name"] == "models")
    assert mount == {"name": "models", "mountPath": "/var/lib/streamrec/models", "readOnly": True}
    vol = next(v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "models")
    assert vol["persistentVolumeClaim"] == {"claimName": "streamrec-models", "readOnly": True}
    ann = dep["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/port"] == "9108"


def test_train_agent_deployment() -> None:
    dep = _by_kind("Deployment")["streamrec-train-agent"]
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"]["type"] == "Recreate"  # never two writers of the registry
    (c,) = _containers(dep)
    assert c["args"] == ["train-agent"]
    assert c["image"].startswith("streamrec-train:")
    mount = next(m for m in c["volumeMounts"] if m["name"] == "models")
    assert not mount.get("readOnly")
    pvc = _by_kind("PersistentVolumeClaim")["streamrec-models"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_hpa_pdb_and_services() -> None:
    hpa = _by_kind("HorizontalPodAutoscaler")["streamrec-worker"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == "streamrec-worker"
    assert hpa["spec"]["maxReplicas"] <= 4  # user-events has 4 partitions
    types = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert types["Resource"]["resource"]["name"] == "cpu"
    assert types["External"]["external"]["metric"]["name"] == "streamrec_consumer_lag"
    assert "prometheus-adapter" in (K8S / "hpa.yaml").read_text()
    pdb = _by_kind("PodDisruptionBudget")["streamrec-worker"]
    assert pdb["apiVersion"] == "policy/v1"
    worker_labels = _by_kind("Deployment")["streamrec-worker"]["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["selector"]["matchLabels"] == worker_labels
    svc = _by_kind("Service")["streamrec-worker-metrics"]
    assert svc["spec"]["selector"] == worker_labels
    assert svc["spec"]["ports"][0]["port"] == 9108


def test_secrets_hold_only_placeholders() -> None:
    secrets = _by_kind("Secret")
    assert secrets, "the example Secret is missing"
    for name, s in secrets.items():
        assert not s.get("data"), f"{name}: use stringData placeholders, not data"
        for key, value in s["stringData"].items():
            assert PLACEHOLDER in value, f"{name}.{key} is not a placeholder"
    # No other manifest carries something that looks like a credential.
    for fname, d in _manifests():
        if d["kind"] == "Secret":
            continue
        text = yaml.safe_dump(d)
        assert not re.search(r"(?i)(password|passwd|secret|token)\s*:\s*\S", text), fname
        assert not re.search(r"://[^/\s:@]*:[^@\s]+@", text), f"{fname}: credentials in a URL"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_renders_offline() -> None:
    r = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True,
                       timeout=120, check=False)  # fmt: skip
    assert r.returncode == 0, r.stderr
    docs = [d for d in yaml.safe_load_all(r.stdout) if d]
    assert {d["kind"] for d in docs} >= {"Deployment", "HorizontalPodAutoscaler"}
    for d in docs:
        for c in d.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            assert re.fullmatch(r"streamrec(-train)?:\d+\.\d+\.\d+", c["image"]), c["image"]


def test_manifests_match_the_kubernetes_schemas() -> None:
    kv = pytest.importorskip(
        "kubernetes_validate", reason="pip install kubernetes-validate (ships the schemas)"
    )
    for fname, d in _manifests():
        try:
            kv.validate(d, K8S_VERSION, strict=True)
        except kv.ValidationError as exc:  # pragma: no cover - the message is the point
            pytest.fail(f"{fname} {d['kind']}/{d['metadata']['name']}: {exc}")


# --- docs ------------------------------------------------------------------------------------


def test_runbook_is_linked_from_the_deploy_doc() -> None:
    assert "(operations.md)" in (ROOT / "docs" / "deploy.md").read_text()
