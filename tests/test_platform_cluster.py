"""Launch files: the `ray up` YAML passes Ray's own schema; KubeRay manifests and the compose file are sane."""
from __future__ import annotations

from pathlib import Path

import ray
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_ray_up_config_passes_the_autoscaler_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load((ROOT / "cluster" / "ray-cluster.yaml").read_text()))
    validate_config(config)  # what `ray up` runs first
    assert config["head_node_type"] in config["available_node_types"]
    assert any("RAY_AUTH_MODE=token" in cmd for cmd in config["head_start_ray_commands"])


def test_kuberay_manifests_pin_this_ray_and_enable_token_auth():
    cluster = yaml.safe_load((ROOT / "cluster" / "kuberay-raycluster.yaml").read_text())
    job = yaml.safe_load((ROOT / "cluster" / "kuberay-rayjob.yaml").read_text())
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    for spec in (cluster["spec"], job["spec"]["rayClusterSpec"]):
        assert spec["rayVersion"] == ray.__version__ and spec["authOptions"] == {"mode": "token"}
        assert spec["headGroupSpec"]["template"]["spec"]["containers"][0]["image"].endswith("splitlab:0.1.0")
    assert "splitlab.cli sweep tune_configs/network_sweep.yaml" in job["spec"]["entrypoint"]
    assert (ROOT / "tune_configs" / "network_sweep.yaml").is_file()


def test_compose_file_serves_mlflow_over_postgres_and_an_object_store():
    compose = yaml.safe_load((ROOT / "mlflow" / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "minio", "create-bucket", "mlflow"} <= set(services)
    command = services["mlflow"]["command"]
    assert "--backend-store-uri postgresql://" in command and "--artifacts-destination s3://mlflow" in command
    assert services["mlflow"]["ports"] == ["127.0.0.1:5000:5000"]
    assert not (ROOT / "mlflow" / "__init__.py").exists()  # a package there would shadow the mlflow library
