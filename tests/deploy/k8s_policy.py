"""What the qward manifests must keep true, as one function: ``violations(objects)``.

Each rule names the object and container it found wrong, so a failing test says what to fix.
The rules follow docs/privilege-separation.md and docs/kubernetes.md: three distinct uids (core,
public server, workers); the core's secrets and state reach the core only; no container is
privileged or gains privileges; the core alone may start as root, and then only to drop at once
to its user, keeping exactly CAP_SETUID and CAP_SETGID (CAP_SETPCAP for the drop itself).
"""

from __future__ import annotations

from typing import Any

from k8s_manifests import Obj, pod_spec

#: Secrets only the protected core may see.
CORE_SECRETS = frozenset({"qward-log-identity", "qward-keystore-passphrase", "qward-log-database"})
#: Environment variables only the protected core may have (the launcher's deny list, and more).
CORE_ENV_PREFIXES = (
    "QWARD_LOG_DATABASE",
    "QWARD_LOG_IDENTITY",
    "QWARD_KEYSTORE_",
    "QWARD_PKCS11_",
)
#: The capabilities a core started as root keeps (SETPCAP only until it has dropped).
CORE_ROOT_CAPABILITIES = frozenset({"SETGID", "SETPCAP", "SETUID"})
_LIVENESS = {"/livez", "/v2/health/live"}
_READINESS = {"/readyz", "/v2/health/ready"}


def role(container: Obj) -> str:
    """core, public, witness or other, from the command the container runs."""
    text = " ".join(container.get("command", []) + container.get("args", []))
    for module, name in (
        ("qward.protected", "core"),
        ("qward.public", "public"),
        ("qward.witness", "witness"),
    ):
        if module in text:
            return name
    return "other"


def flag(container: Obj, name: str) -> str | None:
    """The value of ``--name=VALUE`` (or ``--name VALUE``) in the container's arguments."""
    words = container.get("command", []) + container.get("args", [])
    for i, word in enumerate(words):
        if word.startswith(f"{name}="):
            return str(word.split("=", 1)[1])
        if word == name and i + 1 < len(words):
            return str(words[i + 1])
    return None


def pods(objects: list[Obj]) -> list[tuple[str, Obj]]:
    """(name, pod spec) of every pod the objects describe; KServe's runtime and service merged."""
    found = []
    runtimes = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ServingRuntime"}
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        spec = pod_spec(obj)
        if spec is not None:
            # A StatefulSet's claim templates are volumes of its pods, as PVCs.
            claims = [
                {"name": t["metadata"]["name"], "persistentVolumeClaim": {"claimName": "template"}}
                for t in obj["spec"].get("volumeClaimTemplates", [])
            ]
            found.append((name, {**spec, "volumes": spec.get("volumes", []) + claims}))
        elif obj["kind"] == "InferenceService":
            predictor = obj["spec"]["predictor"]
            runtime = runtimes.get(predictor["model"]["runtime"])
            if runtime is None:
                found.append((name, {"containers": [], "missing_runtime": True}))
                continue
            merged = {k: v for k, v in predictor.items() if k not in ("model", "containers")}
            merged["containers"] = runtime["spec"]["containers"] + predictor.get("containers", [])
            merged["volumes"] = runtime["spec"].get("volumes", []) + predictor.get("volumes", [])
            found.append((name, merged))
    return found


def violations(objects: list[Obj]) -> list[str]:
    """Every rule the objects break, one line each; empty when all hold."""
    found: list[str] = []
    found += [
        f"{o['kind']}/{o['metadata']['name']}: a Secret in the manifests"
        for o in objects
        if o["kind"] == "Secret"
    ]
    for name, spec in pods(objects):
        if spec.get("missing_runtime"):
            found.append(f"{name}: its ServingRuntime is not among the objects")
            continue
        found += _pod_rules(name, spec)
    found += _service_rules(objects)
    found += _network_rules(objects)
    return found


def _pod_rules(name: str, spec: Obj) -> list[str]:
    found = []
    if spec.get("automountServiceAccountToken") is not False:
        found.append(f"{name}: automountServiceAccountToken is not false")
    pod_context = spec.get("securityContext", {})
    every = spec.get("initContainers", []) + spec.get("containers", [])
    for container in every:
        where = f"{name}/{container['name']}"
        found += _container_rules(where, container, pod_context)
    found += _identity_rules(name, spec)
    found += _secret_rules(name, spec)
    return found


def _container_rules(where: str, container: Obj, pod_context: Obj) -> list[str]:
    found = []
    context = container.get("securityContext", {})
    if context.get("privileged") is True:
        found.append(f"{where}: privileged")
    if context.get("allowPrivilegeEscalation") is not False:
        found.append(f"{where}: allowPrivilegeEscalation is not false")
    if context.get("readOnlyRootFilesystem") is not True:
        found.append(f"{where}: readOnlyRootFilesystem is not true")
    capabilities = context.get("capabilities", {})
    if "ALL" not in capabilities.get("drop", []):
        found.append(f"{where}: does not drop ALL capabilities")
    seccomp = context.get("seccompProfile") or pod_context.get("seccompProfile") or {}
    if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
        found.append(f"{where}: no RuntimeDefault or Localhost seccomp profile")
    for kind in ("requests", "limits"):
        amounts = container.get("resources", {}).get(kind, {})
        if not {"cpu", "memory"} <= set(amounts):
            found.append(f"{where}: no cpu and memory {kind}")
    image = str(container.get("image", ""))
    tag = image.rsplit("/", 1)[-1]
    if "@sha256:" not in image and (":" not in tag or tag.endswith(":latest")):
        found.append(f"{where}: image {image!r} is not pinned to a tag or digest")
    found += _user_rules(where, container, context, pod_context)
    if role(container) == "public":
        found += _probe_rules(where, container)
    if "postgres" in image.rsplit("/", 1)[-1]:
        settings = " ".join(container.get("args", []))
        if "fsync=on" not in settings or "fsync=off" in settings:
            found.append(f"{where}: PostgreSQL without fsync=on")
    return found


def _user_rules(where: str, container: Obj, context: Obj, pod_context: Obj) -> list[str]:
    uid = context.get("runAsUser", pod_context.get("runAsUser"))
    non_root = context.get("runAsNonRoot", pod_context.get("runAsNonRoot"))
    added = set(context.get("capabilities", {}).get("add", []))
    drops_to = flag(container, "--user")
    if role(container) == "core" and drops_to is not None:
        # Root only to drop at once (server.main's first lines), keeping what workers need.
        if uid != 0:
            return [f"{where}: a core given --user must start as uid 0 to drop, not {uid}"]
        if added != CORE_ROOT_CAPABILITIES:
            return [
                f"{where}: a core started as root adds {sorted(added)}, not SETGID, SETPCAP, SETUID"
            ]
        if int(drops_to.split(":")[0]) == 0 or flag(container, "--worker-user") is None:
            return [
                f"{where}: a core started as root must drop to a non-root --user and "
                "start workers as --worker-user"
            ]
        return []
    found = []
    if non_root is not True or not isinstance(uid, int) or uid <= 0:
        found.append(f"{where}: not runAsNonRoot with a non-zero runAsUser")
    if added:
        found.append(f"{where}: adds capabilities {sorted(added)}")
    return found


def _probe_rules(where: str, container: Obj) -> list[str]:
    found = []
    for probe, paths in (("livenessProbe", _LIVENESS), ("readinessProbe", _READINESS)):
        path = container.get(probe, {}).get("httpGet", {}).get("path")
        if path not in paths:
            found.append(f"{where}: {probe} is not an HTTP GET of {sorted(paths)}")
    return found


def _uid(container: Obj, pod_context: Obj) -> Any:
    drops_to = flag(container, "--user")
    if role(container) == "core" and drops_to is not None:
        return int(drops_to.split(":")[0])
    return container.get("securityContext", {}).get("runAsUser", pod_context.get("runAsUser"))


def _identity_rules(name: str, spec: Obj) -> list[str]:
    pod_context = spec.get("securityContext", {})
    main = spec.get("containers", [])
    cores = [c for c in main if role(c) == "core"]
    publics = [c for c in main if role(c) == "public"]
    if not cores and not publics:
        return []
    if len(cores) != 1 or len(publics) != 1:
        return [f"{name}: a qward pod needs one core and one public container"]
    core, public = cores[0], publics[0]
    core_uid, public_uid = _uid(core, pod_context), _uid(public, pod_context)
    worker = flag(core, "--worker-user")
    worker_uid = int(worker.split(":")[0]) if worker else core_uid
    found = []
    if core_uid == public_uid:
        found.append(f"{name}: core and public server share uid {core_uid}")
    if worker is not None and worker_uid in (core_uid, public_uid):
        found.append(f"{name}: workers run as uid {worker_uid}, not a uid of their own")
    if flag(core, "--api-uid") != str(public_uid):
        found.append(f"{name}: the core's --api-uid is not the public server's uid {public_uid}")
    if pod_context.get("fsGroup") != core_uid:
        found.append(f"{name}: fsGroup is not the core's group (the socket's group)")
    return found


def _secret_rules(name: str, spec: Obj) -> list[str]:
    pod_context = spec.get("securityContext", {})
    main = spec.get("containers", [])
    core_uid = next((_uid(c, pod_context) for c in main if role(c) == "core"), None)
    private: set[str] = set()
    for volume in spec.get("volumes", []):
        if volume.get("secret", {}).get("secretName") in CORE_SECRETS:
            private.add(volume["name"])
        if "persistentVolumeClaim" in volume and core_uid is not None:
            private.add(volume["name"])
    found = []
    for container in spec.get("initContainers", []) + main:
        where = f"{name}/{container['name']}"
        is_core = role(container) == "core"
        own_uid = container.get("securityContext", {}).get("runAsUser")
        for mount in container.get("volumeMounts", []):
            if mount["name"] not in private or is_core:
                continue
            secret = any(
                v["name"] == mount["name"] and "secret" in v for v in spec.get("volumes", [])
            )
            # The core's own init container may prepare its state volume, never read its secrets.
            if secret or own_uid != core_uid:
                found.append(f"{where}: mounts the core's volume {mount['name']}")
        if is_core:
            continue
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef", {}).get("name")
            if env["name"].startswith(CORE_ENV_PREFIXES) or ref in CORE_SECRETS:
                found.append(f"{where}: has the core's environment {env['name']}")
        for source in container.get("envFrom", []):
            if source.get("secretRef", {}).get("name") in CORE_SECRETS:
                found.append(f"{where}: takes environment from a core Secret")
    return found


def _service_rules(objects: list[Obj]) -> list[str]:
    sets = {o["metadata"]["name"]: o for o in objects if o["kind"] == "StatefulSet"}
    services = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Service"}
    qward = sets.get("qward")
    if qward is None:
        return []
    found = []
    labels = qward["spec"]["template"]["metadata"]["labels"]
    public = [c for c in qward["spec"]["template"]["spec"]["containers"] if role(c) == "public"]
    ports = {p["name"] for c in public for p in c.get("ports", [])}
    for svc_name in ("qward", "qward-cores"):
        svc = services.get(svc_name)
        if svc is None:
            found.append(f"Service/{svc_name}: missing")
            continue
        selector = svc["spec"].get("selector", {})
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            found.append(f"Service/{svc_name}: selector {selector} does not select the replicas")
        for port in svc["spec"]["ports"]:
            if port.get("targetPort") not in ports:
                found.append(
                    f"Service/{svc_name}: targetPort {port.get('targetPort')} is not "
                    "a public server port"
                )
    headless = services.get("qward-cores")
    if headless is not None and headless["spec"].get("clusterIP") != "None":
        found.append("Service/qward-cores: not headless (clusterIP None)")
    if qward["spec"].get("serviceName") != "qward-cores":
        found.append("StatefulSet/qward: serviceName is not qward-cores")
    return found


def _network_rules(objects: list[Obj]) -> list[str]:
    found = []
    for policy in (o for o in objects if o["kind"] == "NetworkPolicy"):
        where = f"NetworkPolicy/{policy['metadata']['name']}"
        spec = policy["spec"]
        if set(spec.get("policyTypes", [])) != {"Ingress", "Egress"}:
            found.append(f"{where}: does not restrict both ingress and egress")
        for rule in spec.get("ingress", []):
            if not rule.get("ports"):
                found.append(f"{where}: an ingress rule open on every port")
        if policy["metadata"]["name"] == "qward":
            opened = {p["port"] for r in spec.get("ingress", []) for p in r.get("ports", [])}
            if not opened <= {"http", 8000}:
                found.append(f"{where}: ingress to {sorted(map(str, opened))}, not only http")
    return found
