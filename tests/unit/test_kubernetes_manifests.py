"""Static checks of the Kubernetes manifests in k8s/ (docs/kubernetes.md): each object against the schema
the cluster would check it with, and against what it must agree with in the project (the image, the
profile, the job's entry module, Flink's configuration in conf/flink, the Dockerfile).

Why static: CI (`make test`) has no Kubernetes cluster, no operator and no network, so nothing applies
the manifests (docs/kubernetes.md says what was never run). What `kubectl apply` would refuse is checked
here instead:
- the custom resources (the FlinkDeployment, the FlinkStateSnapshot of a savepoint) against the
  openAPIV3Schema of the Flink Kubernetes Operator's CRDs (OPERATOR_CRDS), with jsonschema, plus a check
  that every one of their fields is declared there: the API server drops a custom resource's undeclared
  fields, or refuses them under kubectl's strict field validation, and jsonschema alone would let a
  mistyped field through;
- Kubernetes' own objects (Namespace, ServiceAccount, Role, RoleBinding, PersistentVolumeClaim, Secret),
  the custom resources' metadata and the FlinkDeployment's pod templates against the schemas of
  Kubernetes KUBERNETES_VERSION that kubernetes-validate (pinned in constraints.txt) ships, strict: no
  unknown field.

Each check is a small function that returns its problems (empty when all is well), so that each one is
also fed a broken example here, to show that it can fail.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import re
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import tomllib
import yaml

from streaming.config import PROFILE_ENV, PSEUDONYM_KEY_ENV, ConfigError, Settings, load_settings
from streaming.config.endpoints import KAFKA_PROPERTY_ENV_PREFIX
from streaming.config.flink_options import python_worker_executable
from streaming.job import flink_main
from streaming.job.identity import ENTRY_MODULE
from streaming.ops import local_cluster

PROJECT = Path(__file__).resolve().parents[2]
K8S = PROJECT / "k8s"
# What `kubectl apply -k k8s` applies is listed there; the Secret's example is applied apart, and the
# savepoint is created on demand.
KUSTOMIZATION = "kustomization.yaml"
SECRET_EXAMPLE = "secret.example.yaml"
ON_DEMAND = (SECRET_EXAMPLE, "savepoint.yaml")

# The Kubernetes version whose schemas the built-in objects are checked against (kubernetes-validate
# ships each version's; docs/kubernetes.md names it).
KUBERNETES_VERSION = "1.33"
# The CRDs of the Flink Kubernetes Operator 1.15.0 that the manifests use, copied from
# github.com/apache/flink-kubernetes-operator, helm/flink-kubernetes-operator/crds/<name>-v1.yml at tag
# release-1.15.0 (commit 79d730bab4d8403f3a447fb027f879f5cbdc59ad, 2026-05-07; Apache-2.0): the files the
# operator's API module generates under META-INF/fabric8 (the jar org.apache.flink:flink-kubernetes-
# operator-api) and copies into its Helm chart. Copies, not a Maven download: Maven Central, as reachable
# from this project's machines, serves that artifact up to 1.10.0 only, whose flinkVersion enum ends at
# v1_20 (Flink 2.2, v2_2, needs the operator 1.13 or later).
OPERATOR_VERSION = "1.15.0"
OPERATOR_FIXTURES = PROJECT / "tests" / "fixtures" / f"flink-kubernetes-operator-{OPERATOR_VERSION}"
OPERATOR_CRDS = {"FlinkDeployment": OPERATOR_FIXTURES / "flinkdeployments.flink.apache.org-v1.yml",
                 "FlinkStateSnapshot": OPERATOR_FIXTURES / "flinkstatesnapshots.flink.apache.org-v1.yml"}

# The image's working directory (the Dockerfile's WORKDIR), where the repository's files are, and its
# virtual environment's packages: the Dockerfile's base is Debian bookworm, whose python3 is 3.11.
IMAGE_ROOT = PurePosixPath("/opt/riskstream")
IMAGE_BASE = "debian:bookworm-slim"
IMAGE_SITE_PACKAGES = IMAGE_ROOT / ".venv" / "lib" / "python3.11" / "site-packages"
IMAGE_PYTHON = IMAGE_ROOT / ".venv" / "bin" / "python"
# The name Flink gives the container it runs in, in the pod templates it merges with its own.
MAIN_CONTAINER = "flink-main-container"
PYTHON_DRIVER = "org.apache.flink.client.python.PythonDriver"
# The options of Flink's PythonDriver that take a value (CliFrontendParser's Python options); the
# program's own arguments follow them.
DRIVER_OPTIONS = {"-py", "--python", "-pym", "--pyModule", "-pyfs", "--pyFiles", "-pyreq", "--pyRequirements",
                  "-pyarch", "--pyArchives", "-pyexec", "--pyExecutable", "-pyclientexec", "--pyClientExecutable",
                  "-pypath", "--pyPythonPath"}
DEFAULT_REST_PORT = "8081"  # Flink's rest.port when flinkConfiguration does not set it
# What the JobManager of a native Kubernetes deployment does with the API server (creates and deletes
# its TaskManager pods, keeps its high-availability pointers in ConfigMaps, owns what it makes through
# its Deployment): the rules of the operator's Helm chart for the jobs' service account.
JOB_RULES = {("", "pods"), ("", "configmaps"), ("apps", "deployments")}
JOB_VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}


# ---------------------------------------------------------------- reading the files


def documents(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text(encoding="utf-8")) if document]


def manifest_files(root: Path = K8S) -> list[Path]:
    return sorted(path for path in root.glob("*.yaml") if path.name != KUSTOMIZATION)


def all_objects() -> list[dict[str, Any]]:
    """Every object of k8s/, those made on demand included."""
    return [document for path in manifest_files() for document in documents(path)]


def the_one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [item for item in objects if item.get("kind") == kind]
    assert len(found) == 1, f"{len(found)} objects of kind {kind} in k8s/, expected one"
    return found[0]


def deployment() -> dict[str, Any]:
    return the_one(all_objects(), "FlinkDeployment")


def name_of(item: dict[str, Any]) -> str:
    """An object's name (or the prefix of the names `kubectl create` gives it, generateName)."""
    metadata = item.get("metadata") or {}
    return metadata.get("name") or metadata.get("generateName") or ""


@functools.cache
def operator_crd(kind: str = "FlinkDeployment") -> dict[str, Any]:
    """The operator's CRD of `kind` (the FlinkDeployment's is half a megabyte: parsed once, in C when
    PyYAML has it)."""
    text = OPERATOR_CRDS[kind].read_text(encoding="utf-8")
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def pinned_flink() -> str:
    """constraints.txt's apache-flink version (e.g. 2.2.1)."""
    text = (PROJECT / "constraints.txt").read_text(encoding="utf-8")
    return re.search(r"^apache-flink==(\S+)$", text, re.MULTILINE).group(1)


def project_version() -> str:
    return tomllib.loads((PROJECT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]


def installed_pyflink() -> Path:
    """The installed PyFlink's folder, found without importing it (the unit tier imports no pyflink)."""
    return Path(importlib.util.find_spec("pyflink").submodule_search_locations[0])


def in_project(path: str | PurePosixPath) -> Path:
    """Where a path of the image under IMAGE_ROOT is in this checkout."""
    return PROJECT / PurePosixPath(path).relative_to(IMAGE_ROOT)


def containers(template: dict[str, Any] | None) -> list[dict[str, Any]]:
    return ((template or {}).get("spec") or {}).get("containers") or []


def main_container(template: dict[str, Any] | None) -> dict[str, Any]:
    return next((container for container in containers(template) if container.get("name") == MAIN_CONTAINER), {})


def environment(container: dict[str, Any]) -> dict[str, str]:
    return {variable["name"]: variable.get("value", "") for variable in container.get("env") or []}


def flink_configuration(resource: dict[str, Any]) -> dict[str, str]:
    return {str(key): str(value) for key, value in (resource["spec"].get("flinkConfiguration") or {}).items()}


# ---------------------------------------------------------------- 1. the operator's CRD


def crd_schema(crd: dict[str, Any], api_version: str, kind: str) -> dict[str, Any] | None:
    """The openAPIV3Schema the CRD serves `kind` at `api_version` (group/version) with, or None."""
    group, _, version = api_version.partition("/")
    if crd["spec"]["group"] != group or crd["spec"]["names"]["kind"] != kind:
        return None
    return next((served["schema"]["openAPIV3Schema"] for served in crd["spec"]["versions"]
                 if served["name"] == version and served.get("served")), None)


def undeclared_fields(value: Any, schema: dict[str, Any], path: str) -> list[str]:
    """Fields of `value` that the structural `schema` does not declare: where it names neither the field
    (properties) nor a schema for any field (additionalProperties) nor keeps unknown fields
    (x-kubernetes-preserve-unknown-fields), the API server would drop or refuse them."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    problems = []
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if key in properties:
                problems += undeclared_fields(item, properties[key], where)
            elif isinstance(additional, dict):
                problems += undeclared_fields(item, additional, where)
            elif additional is not True:
                problems.append(f"{where}: no such field in the schema")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            problems += undeclared_fields(item, schema["items"], f"{path}.{index}")
    return problems


def crd_problems(resource: dict[str, Any], crd: dict[str, Any]) -> list[str]:
    """Where a custom resource breaks its CRD's schema: a version the CRD does not serve, a value of the
    wrong type or outside an enum, a field the schema does not declare. The API server handles
    apiVersion, kind and metadata itself (kubernetes_problems checks the metadata)."""
    schema = crd_schema(crd, resource.get("apiVersion", ""), resource.get("kind", ""))
    if schema is None:
        return [f"{resource.get('kind')} {resource.get('apiVersion')}: not served by {crd['metadata']['name']}"]
    body = {key: value for key, value in resource.items() if key not in ("apiVersion", "kind", "metadata")}
    # An OpenAPI v3 schema is JSON Schema with extensions (x-kubernetes-*), which jsonschema ignores.
    validator = jsonschema.Draft7Validator(schema)
    problems = [f"{'.'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(body)]
    return sorted(problems + undeclared_fields(body, schema, ""))


def test_the_crd_is_the_operators_flinkdeployment_and_knows_flink_2_2():
    crd = operator_crd()
    assert crd["kind"] == "CustomResourceDefinition" and crd["metadata"]["name"] == "flinkdeployments.flink.apache.org"
    schema = crd_schema(crd, "flink.apache.org/v1beta1", "FlinkDeployment")
    assert schema is not None, [version["name"] for version in crd["spec"]["versions"]]
    assert "v2_2" in schema["properties"]["spec"]["properties"]["flinkVersion"]["enum"]


def test_every_custom_resource_follows_the_operators_crd():
    custom = [item for item in all_objects() if item["apiVersion"].startswith("flink.apache.org/")]
    assert sorted(item["kind"] for item in custom) == sorted(OPERATOR_CRDS), custom
    problems = [problem for item in custom for problem in crd_problems(item, operator_crd(item["kind"]))]
    assert not problems, "\n".join(problems)


def test_a_flink_deployment_the_crd_rejects_is_reported():
    broken = copy.deepcopy(deployment())
    broken["spec"]["flinkVersion"] = "v2_9"
    broken["spec"]["job"]["parallelism"] = "two"
    broken["spec"]["jobManger"] = broken["spec"].pop("jobManager")  # a typo: the API server would drop it
    main_container(broken["spec"]["podTemplate"])["volumeMount"] = main_container(
        broken["spec"]["podTemplate"]).pop("volumeMounts")
    problems = crd_problems(broken, operator_crd())
    assert "spec.jobManger: no such field in the schema" in problems, problems
    assert "spec.podTemplate.spec.containers.0.volumeMount: no such field in the schema" in problems, problems
    assert any(problem.startswith("spec.flinkVersion: 'v2_9' is not one of [") for problem in problems), problems
    assert "spec.job.parallelism: 'two' is not of type 'integer'" in problems, problems
    assert len(problems) == 4, problems
    broken = copy.deepcopy(deployment())
    broken["apiVersion"] = "flink.apache.org/v1"
    assert crd_problems(broken, operator_crd()) == [
        "FlinkDeployment flink.apache.org/v1: not served by flinkdeployments.flink.apache.org"]


def test_a_savepoint_the_crd_rejects_is_reported():
    savepoint = copy.deepcopy(the_one(all_objects(), "FlinkStateSnapshot"))
    savepoint["spec"]["jobReference"]["kind"] = "Deployment"
    savepoint["spec"]["savepoint"]["disposeOnDelete"] = "no"
    savepoint["spec"]["savepoint"]["format"] = "NATIVE"  # formatType
    assert crd_problems(savepoint, operator_crd("FlinkStateSnapshot")) == [
        "spec.jobReference.kind: 'Deployment' is not one of ['FlinkDeployment', 'FlinkSessionJob']",
        "spec.savepoint.disposeOnDelete: 'no' is not of type 'boolean'",
        "spec.savepoint.format: no such field in the schema"]


def test_undeclared_fields_follow_the_structural_schema_rules():
    schema = {"type": "object", "properties": {
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "free": {"x-kubernetes-preserve-unknown-fields": True},
        "items": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}}}}
    value = {"labels": {"any": "x"}, "free": {"any": {"thing": 1}}, "items": [{"name": "a"}, {"nam": "b"}], "extra": 1}
    assert undeclared_fields(value, schema, "") == ["items.1.nam: no such field in the schema",
                                                    "extra: no such field in the schema"]


# ---------------------------------------------------------------- 2. Kubernetes' own schemas


def kubernetes_problems(resource: dict[str, Any], name: str | None = None) -> list[str]:
    """Where an object (called `name`, by default its kind and name) breaks Kubernetes
    KUBERNETES_VERSION's schema for its kind, strict (no unknown field): kubernetes-validate stops at
    the first problem."""
    name = name or f"{resource.get('kind')} {name_of(resource)}"
    try:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{name}: {'.'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}"]
    except kubernetes_validate.SchemaNotFoundError as error:
        return [f"{name}: {error.message}"]
    return []


def embedded_objects(resource: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """What of a custom resource Kubernetes checks with its own schemas, each with where it is: its
    metadata (Kubernetes' ObjectMeta, checked as a ConfigMap's, a kind that is ObjectMeta and optional
    fields) and a FlinkDeployment's pod templates (the pods Flink makes from them)."""
    spec = resource.get("spec") or {}
    name = f"{resource.get('kind')} {name_of(resource)}"
    metadata = resource.get("metadata") or {}
    objects = [(f"{name} metadata", {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata})]
    for where, template in (("spec.podTemplate", spec.get("podTemplate")),
                            ("spec.jobManager.podTemplate", (spec.get("jobManager") or {}).get("podTemplate")),
                            ("spec.taskManager.podTemplate", (spec.get("taskManager") or {}).get("podTemplate"))):
        if template is not None:
            objects.append((f"{name} {where}", {**template, "apiVersion": "v1", "kind": "Pod"}))
    return objects


def objects_kubernetes_checks(objects: list[dict[str, Any]]) -> list[tuple[str | None, dict[str, Any]]]:
    """Every object Kubernetes' schemas check: the built-in ones, and what each custom resource embeds."""
    checked: list[tuple[str | None, dict[str, Any]]] = []
    for item in objects:
        custom = item.get("kind") in OPERATOR_CRDS
        checked += embedded_objects(item) if custom else [(None, item)]
    return checked


def test_every_object_follows_the_kubernetes_schemas():
    checked = objects_kubernetes_checks(all_objects())
    assert {item["kind"] for _, item in checked} >= {"Namespace", "ServiceAccount", "Role", "RoleBinding",
                                                    "PersistentVolumeClaim", "Secret", "ConfigMap", "Pod"}, checked
    problems = [problem for name, item in checked for problem in kubernetes_problems(item, name)]
    assert not problems, "\n".join(problems)


def test_objects_the_kubernetes_schemas_reject_are_reported():
    claim = the_one(all_objects(), "PersistentVolumeClaim")
    wrong_type = copy.deepcopy(claim)
    wrong_type["spec"]["accessModes"] = "ReadWriteMany"  # a list of modes
    assert kubernetes_problems(wrong_type) == [
        "PersistentVolumeClaim riskstream-flink-state: spec.accessModes: 'ReadWriteMany' is not of type 'array', "
        "'null'"]
    mistyped = copy.deepcopy(claim)
    mistyped["spec"]["resource"] = mistyped["spec"].pop("resources")
    [problem] = kubernetes_problems(mistyped)
    assert problem.startswith("PersistentVolumeClaim riskstream-flink-state: spec: Additional properties are not "
                              "allowed ('resource' was unexpected)"), problem
    secret = copy.deepcopy(the_one(all_objects(), "Secret"))
    secret["stringdata"] = secret.pop("stringData")
    [problem] = kubernetes_problems(secret)
    assert "'stringdata' was unexpected" in problem, problem
    assert kubernetes_problems({"apiVersion": "v1", "kind": "Podd", "metadata": {"name": "x"}}) == [
        f"Podd x: Couldn't find schema for kind Podd with api version v1 for kubernetes version {KUBERNETES_VERSION}"]


def test_a_pod_template_or_metadata_kubernetes_rejects_is_reported():
    broken = copy.deepcopy(deployment())
    main_container(broken["spec"]["podTemplate"])["ports"][0]["containerPort"] = "9249"
    broken["metadata"]["labels"] = {"app": 1}
    problems = [problem for name, item in embedded_objects(broken) for problem in kubernetes_problems(item, name)]
    assert problems == [
        "FlinkDeployment riskstream metadata: metadata.labels.app: 1 is not of type 'string', 'null'",
        "FlinkDeployment riskstream spec.podTemplate: spec.containers.0.ports.0.containerPort: '9249' is not of type "
        "'integer'"], problems


# ---------------------------------------------------------------- 3. the objects hold together


def wiring_problems(objects: list[dict[str, Any]]) -> list[str]:
    """References between the objects that lead nowhere: every namespaced object must be in the one
    Namespace; the RoleBinding must bind the Role to the job's ServiceAccount; the FlinkDeployment must
    run as that account, claim the volume and read the Secret under the names they have here, with pod
    templates whose one container Flink recognises; a savepoint must name the FlinkDeployment."""
    names: dict[str, set[str]] = {}
    for item in objects:
        names.setdefault(item["kind"], set()).add(name_of(item))
    namespace = next(iter(names.get("Namespace", {None})))
    problems = [f"{item['kind']} {name_of(item)}: namespace {item['metadata'].get('namespace')!r}, not the "
                f"Namespace's {namespace!r}"
                for item in objects if item["kind"] != "Namespace" and item["metadata"].get("namespace") != namespace]
    bound = set()
    for binding in (item for item in objects if item["kind"] == "RoleBinding"):
        if binding["roleRef"]["name"] not in names.get("Role", set()):
            problems.append(f"RoleBinding {name_of(binding)}: binds no Role of k8s/ ({binding['roleRef']['name']})")
        bound |= {subject["name"] for subject in binding.get("subjects") or []
                  if subject["kind"] == "ServiceAccount" and subject.get("namespace") == namespace}
    for resource in (item for item in objects if item["kind"] == "FlinkDeployment"):
        spec, name = resource["spec"], f"FlinkDeployment {name_of(resource)}"
        if spec.get("serviceAccount") not in names.get("ServiceAccount", set()) & bound:
            problems.append(f"{name}: serviceAccount {spec.get('serviceAccount')!r} is no ServiceAccount of k8s/ "
                            f"bound to a Role")
        templates = {"podTemplate": spec.get("podTemplate"),
                     "jobManager.podTemplate": spec["jobManager"].get("podTemplate"),
                     "taskManager.podTemplate": spec["taskManager"].get("podTemplate")}
        for where, template in ((where, template) for where, template in templates.items() if template is not None):
            if [container.get("name") for container in containers(template)] != [MAIN_CONTAINER]:
                problems.append(f"{name}: {where}: its one container must be named {MAIN_CONTAINER}")
            claims = [(volume.get("persistentVolumeClaim") or {}).get("claimName")
                      for volume in (template.get("spec") or {}).get("volumes") or []]
            problems += [f"{name}: {where}: claims {claim}, no PersistentVolumeClaim of k8s/" for claim in claims
                         if claim is not None and claim not in names.get("PersistentVolumeClaim", set())]
            secrets = [(source.get("secretRef") or {}).get("name")
                       for container in containers(template) for source in container.get("envFrom") or []]
            problems += [f"{name}: {where}: reads Secret {secret}, whose example is not in k8s/" for secret in secrets
                         if secret is not None and secret not in names.get("Secret", set())]
    for snapshot in (item for item in objects if item["kind"] == "FlinkStateSnapshot"):
        reference = snapshot["spec"].get("jobReference") or {}
        if reference.get("name") not in names.get(reference.get("kind"), set()):
            problems.append(f"FlinkStateSnapshot {name_of(snapshot)}: refers to no {reference.get('kind')} of k8s/ "
                            f"({reference.get('name')})")
    return problems


def test_the_objects_refer_to_one_another():
    problems = wiring_problems(all_objects())
    assert not problems, "\n".join(problems)


def test_references_that_lead_nowhere_are_reported():
    objects = copy.deepcopy(all_objects())
    the_one(objects, "PersistentVolumeClaim")["metadata"]["namespace"] = "default"
    the_one(objects, "RoleBinding")["roleRef"]["name"] = "flink"
    resource = the_one(objects, "FlinkDeployment")
    resource["spec"]["serviceAccount"] = "flink"
    resource["spec"]["podTemplate"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] = "state"
    main_container(resource["spec"]["jobManager"]["podTemplate"])["envFrom"][0]["secretRef"]["name"] = "kafka"
    resource["spec"]["taskManager"]["podTemplate"] = {"spec": {"containers": [{"name": "main"}]}}
    the_one(objects, "FlinkStateSnapshot")["spec"]["jobReference"]["name"] = "scoring"
    problems = wiring_problems(objects)
    assert [problem.split(":")[0] for problem in problems] == [
        "PersistentVolumeClaim riskstream-flink-state", "RoleBinding riskstream-flink", "FlinkDeployment riskstream",
        "FlinkDeployment riskstream", "FlinkDeployment riskstream", "FlinkDeployment riskstream",
        "FlinkStateSnapshot riskstream-savepoint-"], problems
    for phrase in ("namespace 'default'", "binds no Role", "serviceAccount 'flink'", "claims state", "Secret kafka",
                   f"must be named {MAIN_CONTAINER}", "(scoring)"):
        assert phrase in "\n".join(problems), (phrase, problems)


def role_problems(role: dict[str, Any]) -> list[str]:
    """What the job's Role lacks of JOB_RULES (each resource with every verb of JOB_VERBS)."""
    granted = {(group, resource) for rule in role.get("rules") or [] if JOB_VERBS <= set(rule.get("verbs") or [])
               for group in rule.get("apiGroups") or [] for resource in rule.get("resources") or []}
    return [f"Role {role['metadata']['name']}: no {sorted(JOB_VERBS)} on {group or 'core'}/{resource}"
            for group, resource in sorted(JOB_RULES - granted)]


def test_the_jobs_role_lets_the_jobmanager_run_its_pods_and_high_availability():
    problems = role_problems(the_one(all_objects(), "Role"))
    assert not problems, "\n".join(problems)


def test_a_role_without_configmaps_or_deletes_is_reported():
    role = {"metadata": {"name": "r"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": sorted(JOB_VERBS)},
                                                 {"apiGroups": ["apps"], "resources": ["deployments"],
                                                  "verbs": ["get", "list", "watch"]}]}
    assert [problem.rsplit(" on ", 1)[1] for problem in role_problems(role)] == ["core/configmaps", "apps/deployments"]


def test_kustomize_applies_every_manifest_but_those_made_on_demand():
    kustomization = yaml.safe_load((K8S / KUSTOMIZATION).read_text(encoding="utf-8"))
    applied = kustomization.get("resources") or []
    expected = sorted(path.name for path in manifest_files() if path.name not in ON_DEMAND)
    assert sorted(applied) == expected, f"k8s/{KUSTOMIZATION} resources {applied}, expected {expected}"
    assert "namespace" not in kustomization, "the manifests name their namespace themselves"


# ---------------------------------------------------------------- 4. the image and the job's entry point


def image_problems(resource: dict[str, Any], version: str, dockerfile_text: str) -> list[str]:
    """The image must be the project's (any registry, name riskstream), tagged with its version, built from
    the base whose Python IMAGE_SITE_PACKAGES assumes, and its pods must run as the image's user."""
    problems = []
    image = resource["spec"].get("image", "")
    repository, _, tag = image.rpartition(":")
    if repository.rsplit("/", 1)[-1] != "riskstream" or tag != version:
        problems.append(f"image {image!r}: not the project's image riskstream:{version} (under any registry)")
    if not re.search(rf"^FROM {re.escape(IMAGE_BASE)}\b", dockerfile_text, re.MULTILINE):
        problems.append(f"the Dockerfile's base is no longer {IMAGE_BASE}: check IMAGE_SITE_PACKAGES's Python")
    uid = re.search(r"useradd\b[^\n]*--uid (\d+)", dockerfile_text)
    security = (resource["spec"]["podTemplate"].get("spec") or {}).get("securityContext") or {}
    if uid is None or security.get("runAsUser") != int(uid.group(1)) or security.get("fsGroup") != int(uid.group(1)):
        problems.append(f"podTemplate securityContext {security}: runAsUser and fsGroup must be the image user's uid "
                        f"({uid.group(1) if uid else 'none in the Dockerfile'})")
    return problems


def test_the_image_is_the_projects_and_runs_as_its_user():
    dockerfile = (PROJECT / "Dockerfile").read_text(encoding="utf-8")
    problems = image_problems(deployment(), project_version(), dockerfile)
    assert not problems, "\n".join(problems)


def test_another_image_base_or_user_is_reported():
    dockerfile = (PROJECT / "Dockerfile").read_text(encoding="utf-8")
    broken = copy.deepcopy(deployment())
    assert image_problems(broken, project_version(), dockerfile) == []
    broken["spec"]["image"] = "registry.example/riskstream:latest"
    broken["spec"]["podTemplate"]["spec"]["securityContext"]["fsGroup"] = 0
    problems = image_problems(broken, project_version(), dockerfile.replace("bookworm-slim", "trixie-slim"))
    assert len(problems) == 3, problems
    moved = copy.deepcopy(deployment())
    moved["spec"]["image"] = f"registry.example:5000/team/riskstream:{project_version()}"
    assert image_problems(moved, project_version(), dockerfile) == []


def driver_arguments(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """A PythonDriver's arguments split as it reads them: its own options (each with its value) up to
    the first argument that is none of them, then the program's."""
    options, rest = {}, list(args)
    while len(rest) >= 2 and rest[0] in DRIVER_OPTIONS:
        options[rest[0]] = rest[1]
        rest = rest[2:]
    return options, rest


def entry_point_problems(resource: dict[str, Any], flink_version: str, pyflink: Path,
                         scripts: dict[str, str]) -> tuple[list[str], list[str]]:
    """The cluster must be of the pinned Flink's minor version, and the job's program Flink's PythonDriver
    from the installed PyFlink's flink-python jar at its place in the image, running ENTRY_MODULE with
    the image's interpreter as the client and its riskstream-python-worker (a script of pyproject.toml)
    for the workers, as `riskstream submit` passes them to flink run. Returns the problems and the
    program's own arguments."""
    problems = []
    minor = "v" + "_".join(flink_version.split(".")[:2])
    if resource["spec"].get("flinkVersion") != minor:
        problems.append(f"flinkVersion {resource['spec'].get('flinkVersion')!r}: the pinned Flink {flink_version} "
                        f"is {minor}")
    job = resource["spec"]["job"]
    jar = IMAGE_SITE_PACKAGES / "pyflink" / "opt" / f"flink-python-{flink_version}.jar"
    if job.get("entryClass") != PYTHON_DRIVER:
        problems.append(f"job.entryClass {job.get('entryClass')!r}: the Python program runs through {PYTHON_DRIVER}")
    if job.get("jarURI") != f"local://{jar}":
        problems.append(f"job.jarURI {job.get('jarURI')!r}: expected local://{jar}, the flink-python jar of the image")
    if not (pyflink / "opt" / jar.name).is_file():
        problems.append(f"the installed PyFlink has no opt/{jar.name} (constraints.txt pins "
                        f"apache-flink=={flink_version})")
    options, program = driver_arguments(job.get("args") or [])
    module = options.get("-pym") or options.get("--pyModule")
    if module != ENTRY_MODULE:
        problems.append(f"job.args: -pym {module!r}, not the job's entry module {ENTRY_MODULE}")
    elif importlib.util.find_spec(module) is None:
        problems.append(f"job.args: module {module} does not exist")
    client = options.get("-pyclientexec") or options.get("--pyClientExecutable")
    workers = options.get("-pyexec") or options.get("--pyExecutable")
    if client != str(IMAGE_PYTHON):
        problems.append(f"job.args: -pyclientexec {client!r}, not the image's interpreter {IMAGE_PYTHON}")
    worker = python_worker_executable(IMAGE_PYTHON)
    if workers != str(worker) or worker.name not in scripts:
        problems.append(f"job.args: -pyexec {workers!r}, not {worker} (a script of pyproject.toml)")
    return problems, program


def job_settings(program: list[str]) -> Settings:
    """The settings the job's program loads in the image, loaded here: its --config is a profile of the
    image's checkout, its --set overrides are applied as it applies them."""
    arguments = flink_main.parser().parse_args(program)
    return load_settings(in_project(PurePosixPath(arguments.config)), arguments.overrides)


def test_the_job_runs_the_entry_module_through_pythondriver_and_its_profile_loads():
    scripts = tomllib.loads((PROJECT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    problems, program = entry_point_problems(deployment(), pinned_flink(), installed_pyflink(), scripts)
    assert not problems, "\n".join(problems)
    settings = job_settings(program)
    assert settings.source.kind == settings.output.kind == "kafka"


def test_another_driver_jar_module_or_interpreter_is_reported():
    broken = copy.deepcopy(deployment())
    broken["spec"]["job"]["entryClass"] = "streaming.job.flink_main"
    broken["spec"]["job"]["jarURI"] = "local:///opt/flink/opt/flink-python-2.2.1.jar"
    args = broken["spec"]["job"]["args"]
    args[args.index("-pym") + 1] = "streaming.job.nope"
    args[args.index("-pyclientexec") + 1] = "/usr/bin/python3"
    problems, program = entry_point_problems(broken, "2.1.0", installed_pyflink(), {})
    assert len(problems) == 7 and problems[0] == "flinkVersion 'v2_2': the pinned Flink 2.1.0 is v2_1", problems
    assert program[:2] == ["--config", "/opt/riskstream/conf/kubernetes.yaml"], program
    assert driver_arguments(["-pym", "m", "--config", "c", "-pyexec", "p"]) == ({"-pym": "m"},
                                                                               ["--config", "c", "-pyexec", "p"])
    with pytest.raises(ConfigError):
        job_settings(["--config", "/opt/riskstream/conf/kubernetes.yaml", "--set", "flink.parallelism=0"])


# ---------------------------------------------------------------- 5. Flink's settings against the profile


def state_problems(resource: dict[str, Any], settings: Settings) -> list[str]:
    """The job's state and its settings against the FlinkDeployment's: RocksDB; checkpoints, savepoints and
    the high-availability files on the volume that the pod template of every pod mounts (the JobManager's
    and the TaskManagers' alike), in the same folders the profile gives the job; the profile that
    `riskstream` commands in the pods take is the job's; the parallelism the job sets is the operator's;
    the REST address of the profile is the operator's REST service."""
    problems = []
    spec, configuration = resource["spec"], flink_configuration(resource)
    template = spec["podTemplate"]
    claimed = {volume["name"] for volume in template["spec"].get("volumes") or [] if "persistentVolumeClaim" in volume}
    mounts = [PurePosixPath(mount["mountPath"]) for mount in main_container(template).get("volumeMounts") or []
              if mount["name"] in claimed]
    if settings.checkpointing.state_backend != "rocksdb":
        problems.append(f"checkpointing.state_backend is {settings.checkpointing.state_backend}, not rocksdb")
    for key, directory in (("execution.checkpointing.dir", settings.checkpointing.directory),
                           ("execution.checkpointing.savepoint-dir", settings.checkpointing.savepoint_directory)):
        if configuration.get(key) != Path(directory).as_uri():
            problems.append(f"flinkConfiguration {key} is {configuration.get(key)!r}, the profile's "
                            f"{Path(directory).as_uri()!r}")
    for key in ("execution.checkpointing.dir", "execution.checkpointing.savepoint-dir", "high-availability.storageDir"):
        path = PurePosixPath(configuration.get(key, "").removeprefix("file://"))
        if not any(path.is_relative_to(mount) for mount in mounts):
            problems.append(f"flinkConfiguration {key} ({configuration.get(key)}) is on no volume every pod mounts "
                            f"({[str(mount) for mount in mounts]})")
    parallelism = spec["job"].get("parallelism")
    if parallelism != settings.flink.parallelism:
        problems.append(f"job.parallelism {parallelism} but the job sets flink.parallelism "
                        f"{settings.flink.parallelism} (its args' --set): keep them equal")
    rest_address = f"{resource['metadata']['name']}-rest:{configuration.get('rest.port', DEFAULT_REST_PORT)}"
    if settings.flink.rest_address != rest_address:
        problems.append(f"flink.rest_address {settings.flink.rest_address}: the operator's REST service is "
                        f"{rest_address}")
    return problems


def profile_problems(resource: dict[str, Any], program: list[str]) -> list[str]:
    """The profile the pods' `riskstream` commands take (RISKSTREAM_PROFILE) must be the job's --config."""
    profile = environment(main_container(resource["spec"]["podTemplate"])).get(PROFILE_ENV)
    config = str(flink_main.parser().parse_args(program).config)
    return [] if profile == config else [f"{PROFILE_ENV} {profile!r} in the pods, but the job's --config is {config!r}"]


def test_the_jobs_state_and_settings_are_the_operators():
    resource = deployment()
    scripts = tomllib.loads((PROJECT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    _, program = entry_point_problems(resource, pinned_flink(), installed_pyflink(), scripts)
    problems = state_problems(resource, job_settings(program)) + profile_problems(resource, program)
    assert not problems, "\n".join(problems)


def test_state_off_the_volume_or_settings_apart_from_the_operators_are_reported():
    resource = copy.deepcopy(deployment())
    _, program = driver_arguments(resource["spec"]["job"]["args"])
    settings = job_settings(program)
    resource["spec"]["job"]["parallelism"] = 4  # rescaled in the spec but not in the job's --set
    resource["spec"]["flinkConfiguration"]["high-availability.storageDir"] = "file:///tmp/ha"
    resource["spec"]["flinkConfiguration"]["rest.port"] = "8082"
    problems = state_problems(resource, settings)
    assert len(problems) == 3 and "job.parallelism 4" in problems[1] and "/tmp/ha" in problems[0], problems
    # The volume mounted elsewhere takes every state folder off it.
    main_container(resource["spec"]["podTemplate"])["volumeMounts"][0]["mountPath"] = "/var/lib/flink"
    elsewhere = "\n".join(state_problems(resource, settings))
    assert "execution.checkpointing.dir" in elsewhere and "savepoint-dir" in elsewhere, elsewhere
    on_heap = load_settings(PROJECT / "conf" / "compose.yaml", ["checkpointing.state_backend=hashmap",
                                                                   "checkpointing.incremental=false"])
    assert any("not rocksdb" in problem for problem in state_problems(deployment(), on_heap))
    main_container(resource["spec"]["podTemplate"])["env"] = []
    assert len(profile_problems(resource, program)) == 1


def runtime_problems(resource: dict[str, Any], flink_conf: dict[str, Any], container_overrides: dict[str, str],
                     pyflink: Path, flink_version: str) -> list[str]:
    """How Flink runs in the pods, against the project's own Flink configuration: Flink's Kubernetes
    start-up scripts found in the installed PyFlink's bin/ through the pods' PATH; the flink-python jar on
    the job's class path; the Java options, the TaskManager's slots and memory of conf/flink/config.yaml;
    the Prometheus reporter of conf/flink/config.yaml on the one port of the containers'
    conf/flink/compose.yaml, declared as the pods' metrics port; logs in a folder the image's user owns."""
    problems = []
    spec, configuration = resource["spec"], flink_configuration(resource)
    container = main_container(spec["podTemplate"])
    bin_folder = IMAGE_SITE_PACKAGES / "pyflink" / "bin"
    if environment(container).get("PATH", "").split(":")[0] != str(bin_folder):
        problems.append(f"PATH in the pods must start with PyFlink's {bin_folder}, where Flink's scripts are")
    for script in ("kubernetes-jobmanager.sh", "kubernetes-taskmanager.sh"):
        if not (pyflink / "bin" / script).is_file():
            problems.append(f"the installed PyFlink has no bin/{script}")
    jar = f"file://{IMAGE_SITE_PACKAGES / 'pyflink' / 'opt' / f'flink-python-{flink_version}.jar'}"
    if jar not in configuration.get("pipeline.classpaths", "").split(";"):
        problems.append(f"pipeline.classpaths lacks {jar}")
    expected = {"env.java.opts.all": flink_conf["env"]["java"]["opts"]["all"],
                "taskmanager.numberOfTaskSlots": str(flink_conf["taskmanager"]["numberOfTaskSlots"]),
                "metrics.reporter.prom.factory.class": flink_conf["metrics"]["reporter"]["prom"]["factory"]["class"],
                "metrics.reporter.prom.port": container_overrides["metrics.reporter.prom.port"]}
    for key, value in expected.items():
        if configuration.get(key) != value:
            problems.append(f"flinkConfiguration {key} is {configuration.get(key)!r}, not {value!r} as in conf/flink")
    memory = str(flink_conf["taskmanager"]["memory"]["process"]["size"])
    if megabytes(str(spec["taskManager"]["resource"].get("memory"))) != megabytes(memory):
        problems.append(f"taskManager.resource.memory {spec['taskManager']['resource'].get('memory')}, not "
                        f"conf/flink's {memory}")
    ports = {port.get("name"): str(port.get("containerPort")) for port in container.get("ports") or []}
    if ports.get("metrics") != configuration.get("metrics.reporter.prom.port"):
        problems.append(f"the pods' port named metrics is {ports.get('metrics')}, the reporter's "
                        f"{configuration.get('metrics.reporter.prom.port')}")
    if not PurePosixPath(configuration.get("kubernetes.flink.log.dir", "/")).is_relative_to(IMAGE_ROOT / "var"):
        problems.append(f"kubernetes.flink.log.dir {configuration.get('kubernetes.flink.log.dir')!r} is not under "
                        f"{IMAGE_ROOT / 'var'}, the folder the image's user owns")
    return problems


# MiB per unit of a Flink memory size; a size without a unit is in bytes.
MIB_PER_UNIT = {"": 1 / 1024 ** 2, "k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 ** 2}


def megabytes(size: str) -> float | None:
    """A Flink memory size (3072m, 3g, 3072 mb) in MiB; None when it is none."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)b?", size.strip().lower())
    return None if match is None else float(match.group(1)) * MIB_PER_UNIT[match.group(2)]


def flink_conf() -> dict[str, Any]:
    return yaml.safe_load((PROJECT / "conf" / "flink" / "config.yaml").read_text(encoding="utf-8"))


def test_flink_runs_in_the_pods_as_the_projects_configuration_says():
    overrides = local_cluster.flink_overrides(PROJECT / "conf" / "flink" / "compose.yaml")
    problems = runtime_problems(deployment(), flink_conf(), overrides, installed_pyflink(), pinned_flink())
    assert not problems, "\n".join(problems)


def test_flink_settings_apart_from_the_projects_are_reported():
    overrides = local_cluster.flink_overrides(PROJECT / "conf" / "flink" / "compose.yaml")
    broken = copy.deepcopy(deployment())
    configuration = broken["spec"]["flinkConfiguration"]
    configuration["metrics.reporter.prom.port"] = "9250"  # the reporter moved, the declared port did not
    configuration["pipeline.classpaths"] = ""
    configuration["kubernetes.flink.log.dir"] = "/opt/flink/log"
    del configuration["env.java.opts.all"]
    broken["spec"]["taskManager"]["resource"]["memory"] = "2g"
    assert megabytes("3g") == megabytes("3072 MB") == megabytes(str(3072 * 1024 ** 2)) == 3072
    main_container(broken["spec"]["podTemplate"])["env"][0]["value"] = "/usr/bin:/bin"
    problems = runtime_problems(broken, flink_conf(), overrides, installed_pyflink(), pinned_flink())
    assert len(problems) == 7, problems
    for phrase in ("PATH", "pipeline.classpaths", "env.java.opts.all", "metrics.reporter.prom.port", "memory",
                   "port named metrics", "kubernetes.flink.log.dir"):
        assert phrase in "\n".join(problems), (phrase, problems)


# ---------------------------------------------------------------- 6. the Secret


def secret_problems(secret: dict[str, Any]) -> list[str]:
    """Keys of the Secret the job would not read, or would read wrongly: each must be RISKSTREAM_PSEUDONYM_KEY
    or a RISKSTREAM_KAFKA__<NAME> client property, and not the brokers' addresses (the job's sinks take
    them from the profile, so only --set kafka.bootstrap_servers moves them all)."""
    problems = []
    for key in sorted({**(secret.get("data") or {}), **(secret.get("stringData") or {})}):
        if key != PSEUDONYM_KEY_ENV and not key.startswith(KAFKA_PROPERTY_ENV_PREFIX):
            problems.append(f"Secret {secret['metadata']['name']}: {key} is no setting the job reads")
        elif key == f"{KAFKA_PROPERTY_ENV_PREFIX}BOOTSTRAP_SERVERS":
            problems.append(f"Secret {secret['metadata']['name']}: {key}: give the brokers with --set "
                            f"kafka.bootstrap_servers in the job's args")
    return problems


def test_the_secret_holds_only_what_the_job_reads():
    problems = secret_problems(the_one(all_objects(), "Secret"))
    assert not problems, "\n".join(problems)


def test_secret_keys_the_job_does_not_read_are_reported():
    secret = {"metadata": {"name": "s"},
              "stringData": {"KAFKA_SASL_PASSWORD": "x", "RISKSTREAM_KAFKA__SASL_MECHANISM": "x"},
              "data": {"RISKSTREAM_KAFKA__BOOTSTRAP_SERVERS": "eA=="}}
    assert [problem.split(": ")[1] for problem in secret_problems(secret)] == [
        "KAFKA_SASL_PASSWORD is no setting the job reads", "RISKSTREAM_KAFKA__BOOTSTRAP_SERVERS"]
