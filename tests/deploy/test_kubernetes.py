"""deploy/k8s/: the API with probes and autoscaling, workers on their own, Redis
with an append-only file, secrets only from a Secret."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import K8S, answers, cli_command, load_yaml_documents

PROBES = ("startupProbe", "livenessProbe", "readinessProbe")


@pytest.fixture(scope="module")
def kustomization() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return document


@pytest.fixture(scope="module")
def objects(kustomization: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """What `kubectl apply -k deploy/k8s` applies, by kind and name."""
    found = {}
    for resource in kustomization["resources"]:
        for document in load_yaml_documents(K8S / resource):
            found[document["kind"], document["metadata"]["name"]] = document
    return found


def pod(objects: dict[tuple[str, str], dict[str, Any]], kind: str, name: str) -> Any:
    return objects[kind, name]["spec"]["template"]["spec"]


def container(objects: dict[tuple[str, str], dict[str, Any]], name: str) -> Any:
    (only,) = pod(objects, "Deployment", name)["containers"]
    return only


def literal_env(container: dict[str, Any]) -> dict[str, str]:
    return {entry["name"]: entry["value"] for entry in container.get("env", [])}


def port_named(container: dict[str, Any], name: str) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return int(port)


class TestKustomization:
    def test_applies_every_manifest_but_the_example_secret(
        self, kustomization: dict[str, Any]
    ) -> None:
        manifests = {path.name for path in K8S.glob("*.yaml")}

        assert set(kustomization["resources"]) == manifests - {
            "kustomization.yaml",
            "secret.example.yaml",
        }

    def test_applies_the_deployments_services_and_autoscaler(
        self, objects: dict[tuple[str, str], dict[str, Any]]
    ) -> None:
        assert sorted(objects) == [
            ("ConfigMap", "leadloop-config"),
            ("Deployment", "leadloop-api"),
            ("Deployment", "leadloop-worker"),
            ("HorizontalPodAutoscaler", "leadloop-api"),
            ("PodDisruptionBudget", "leadloop-api"),
            ("Service", "leadloop-api"),
            ("Service", "leadloop-redis"),
            ("StatefulSet", "leadloop-redis"),
        ]


class TestApiDeployment:
    def test_serves_the_api_on_the_port_it_is_told(
        self, objects: dict[tuple[str, str], dict[str, Any]]
    ) -> None:
        api = container(objects, "leadloop-api")

        assert api["command"] == ["leadloop", "serve"]
        cli_command(api["command"])
        assert port_named(api, "http") == int(literal_env(api)["LEADLOOP_API_PORT"])
        assert literal_env(api)["LEADLOOP_API_HOST"] == "0.0.0.0"

    @pytest.mark.parametrize("probe", PROBES)
    def test_probes_a_route_the_app_answers(
        self, objects: dict[tuple[str, str], dict[str, Any]], probe: str
    ) -> None:
        check = container(objects, "leadloop-api")[probe]["httpGet"]

        assert check["port"] == "http"
        # /readyz answers 503 here (no Bitrix24): a route, unlike a 404.
        assert (
            answers(check["path"])
            in {"/healthz": {200}, "/readyz": {200, 503}}[check["path"]]
        )

    def test_readiness_does_not_depend_on_bitrix24(
        self, objects: dict[tuple[str, str], dict[str, Any]]
    ) -> None:
        """While the portal is down, webhooks must still be acknowledged."""
        readiness = container(objects, "leadloop-api")["readinessProbe"]

        assert readiness["httpGet"]["path"] == "/healthz"

    def test_is_autoscaled_on_cpu_from_two_replicas(
        self, objects: dict[tuple[str, str], dict[str, Any]]
    ) -> None:
        autoscaler = objects["HorizontalPodAutoscaler", "leadloop-api"]["spec"]
        (metric,) = autoscaler["metrics"]

        assert autoscaler["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "leadloop-api",
        }
        assert 2 <= autoscaler["minReplicas"] < autoscaler["maxReplicas"]
        assert metric["resource"]["name"] == "cpu"
        assert container(objects, "leadloop-api")["resources"]["requests"]["cpu"]

    def test_the_service_reaches_its_pods(
        self, objects: dict[tuple[str, str], dict[str, Any]]
    ) -> None:
        service = objects["Service", "leadloop-api"]["spec"]
        labels = objects["Deployment", "leadloop-api"]["spec"]["template"]["metadata"]

        assert service["selector"].items() <= labels["labels"].items()
        assert service["ports"][0]["targetPort"] == "http"


class TestWorkerDeployment:
    def test_runs_the_worker_in_a_deployment_of_its_own(
        self, objects: dict[tuple[str, str], dict[str, Any]]
    ) -> None:
        worker = container(objects, "leadloop-worker")
        selector = objects["Deployment", "leadloop-worker"]["spec"]["selector"]

        assert worker["command"] == ["leadloop", "worker"]
        cli_command(worker["command"])
        assert selector != objects["Deployment", "leadloop-api"]["spec"]["selector"]

    def test_is_scaled_apart_from_the_api(
        self, objects: dict[tuple[str, str], dict[str, Any]]
    ) -> None:
        targets = [
            document["spec"]["scaleTargetRef"]["name"]
            for (kind, _), document in objects.items()
            if kind == "HorizontalPodAutoscaler"
        ]

        assert targets == ["leadloop-api"]
        assert objects["Deployment", "leadloop-worker"]["spec"]["replicas"] >= 1

    def test_is_probed_on_its_metrics_port(
        self, objects: dict[tuple[str, str], dict[str, Any]]
    ) -> None:
        worker = container(objects, "leadloop-worker")
        port = port_named(worker, "metrics")

        assert literal_env(worker)["LEADLOOP_WORKER_METRICS_PORT"] == str(port)
        for probe in ("livenessProbe", "readinessProbe"):
            assert worker[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}

    def test_gives_a_job_in_flight_time_to_finish(
        self, objects: dict[tuple[str, str], dict[str, Any]]
    ) -> None:
        spec = pod(objects, "Deployment", "leadloop-worker")

        assert spec["terminationGracePeriodSeconds"] >= 30


@pytest.mark.parametrize("name", ["leadloop-api", "leadloop-worker"])
class TestLeadloopPods:
    def test_run_as_the_image_user_never_root(
        self, objects: dict[tuple[str, str], dict[str, Any]], name: str
    ) -> None:
        security = pod(objects, "Deployment", name)["securityContext"]
        dockerfile = (K8S.parent / "Dockerfile").read_text()

        assert security["runAsNonRoot"] is True
        assert f"USER {security['runAsUser']}:{security['runAsGroup']}" in dockerfile
        assert security["runAsUser"] != 0

    def test_cannot_escalate_or_write_but_tmp(
        self, objects: dict[tuple[str, str], dict[str, Any]], name: str
    ) -> None:
        leadloop = container(objects, name)
        volumes = {v["name"]: v for v in pod(objects, "Deployment", name)["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in leadloop["volumeMounts"]}

        assert leadloop["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
        assert "emptyDir" in volumes[mounts["/tmp"]]
        assert pod(objects, "Deployment", name)["automountServiceAccountToken"] is False

    def test_request_and_limit_cpu_and_memory(
        self, objects: dict[tuple[str, str], dict[str, Any]], name: str
    ) -> None:
        resources = container(objects, name)["resources"]

        assert set(resources["requests"]) == {"cpu", "memory"}
        assert set(resources["limits"]) == {"cpu", "memory"}

    def test_read_the_rules_where_leadloop_config_points(
        self, objects: dict[tuple[str, str], dict[str, Any]], name: str
    ) -> None:
        config = objects["ConfigMap", "leadloop-config"]["data"]["LEADLOOP_CONFIG"]
        leadloop = container(objects, name)
        mounts = {m["name"]: m for m in leadloop["volumeMounts"]}
        volumes = {v["name"]: v for v in pod(objects, "Deployment", name)["volumes"]}

        assert config.startswith(mounts["rules"]["mountPath"] + "/")
        assert mounts["rules"]["readOnly"] is True
        assert volumes["rules"]["configMap"]["name"] == "leadloop-rules"

    def test_take_settings_from_the_config_map_and_secrets_from_the_secret(
        self,
        objects: dict[tuple[str, str], dict[str, Any]],
        variables: dict[str, bool],
        name: str,
    ) -> None:
        leadloop = container(objects, name)

        assert leadloop["envFrom"] == [
            {"configMapRef": {"name": "leadloop-config"}},
            {"secretRef": {"name": "leadloop-secrets"}},
        ]
        assert set(literal_env(leadloop)) <= set(variables)
        assert [key for key in literal_env(leadloop) if variables[key]] == []


class TestSettingsObjects:
    def test_the_config_map_holds_real_settings_and_no_secret(
        self,
        objects: dict[tuple[str, str], dict[str, Any]],
        variables: dict[str, bool],
    ) -> None:
        data = objects["ConfigMap", "leadloop-config"]["data"]

        assert set(data) <= set(variables)
        assert [key for key in data if variables[key]] == []
        assert data["LEADLOOP_ENV"] == "production"
        assert data["LEADLOOP_REDIS_URL"] == "redis://leadloop-redis:6379/0"

    def test_every_setting_a_deployed_process_reads_is_set_somewhere(
        self,
        objects: dict[tuple[str, str], dict[str, Any]],
        variables: dict[str, bool],
    ) -> None:
        (secret,) = load_yaml_documents(K8S / "secret.example.yaml")
        given = set(objects["ConfigMap", "leadloop-config"]["data"])
        given |= set(secret["stringData"])
        for name in ("leadloop-api", "leadloop-worker"):
            given |= set(literal_env(container(objects, name)))

        # The sandbox's own address is for `leadloop sandbox`, never deployed.
        wanted = {name for name in variables if "_SANDBOX_" not in name}
        assert sorted(wanted - given) == []

    def test_the_example_secret_lists_every_secret_setting(
        self, variables: dict[str, bool]
    ) -> None:
        (secret,) = load_yaml_documents(K8S / "secret.example.yaml")
        keys = set(secret["stringData"])

        assert keys <= set(variables)
        assert {name for name, is_secret in variables.items() if is_secret} <= keys

    def test_no_manifest_but_the_example_writes_a_secret_value(
        self, kustomization: dict[str, Any], variables: dict[str, bool]
    ) -> None:
        secret_names = [name for name, is_secret in variables.items() if is_secret]
        for resource in kustomization["resources"]:
            text = (K8S / resource).read_text()
            assert [n for n in secret_names if re.search(rf"\b{n}\b", text)] == []


class TestRedis:
    def test_keeps_an_append_only_file_on_a_persistent_volume(
        self, objects: dict[tuple[str, str], dict[str, Any]]
    ) -> None:
        redis = objects["StatefulSet", "leadloop-redis"]["spec"]
        (server,) = redis["template"]["spec"]["containers"]
        options = dict(zip(server["args"][1::2], server["args"][2::2], strict=True))
        (claim,) = redis["volumeClaimTemplates"]

        assert options["--appendonly"] == "yes"
        assert options["--maxmemory-policy"] == "noeviction"
        assert {"name": claim["metadata"]["name"], "mountPath": "/data"} in server[
            "volumeMounts"
        ]
        assert server["readinessProbe"]["exec"]["command"] == ["redis-cli", "ping"]
        assert set(server["resources"]["limits"]) == {"cpu", "memory"}

    def test_is_where_the_config_map_says(
        self, objects: dict[tuple[str, str], dict[str, Any]]
    ) -> None:
        url = objects["ConfigMap", "leadloop-config"]["data"]["LEADLOOP_REDIS_URL"]
        service = objects["Service", "leadloop-redis"]["spec"]

        assert url.startswith(f"redis://leadloop-redis:{service['ports'][0]['port']}/")
