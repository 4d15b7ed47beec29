"""deploy/: the Ray cluster launcher YAML passes Ray's own schema, the KubeRay manifests carry the
fields that matter, every launch command's overrides are real config keys, and the YAML lints."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def _tool(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for p in [Path(sys.executable).parent / name] if p.exists()), None)


def _load(rel: str) -> dict:
    return yaml.safe_load((ROOT / rel).read_text())


def _launch_args(cmd: str) -> tuple[list[str], list[str]]:
    """'wsrl-dist launch a.yaml k=v ...' -> (yaml paths, overrides), parsed by the real CLI's
    argument parser (an option it does not know, e.g. `--set`, fails here as it would there)."""
    from wsrl_dist import cli

    toks = shlex.split(cmd)
    argv = toks[toks.index("launch"):]
    seen = []
    real = cli._dispatch
    cli._dispatch = lambda args: seen.append(args) or 0  # parse only, never launch
    try:
        assert cli.main(argv) == 0
    except SystemExit as e:  # argparse: unrecognized arguments
        raise AssertionError(f"wsrl-dist rejects {argv}: exit {e.code}") from None
    finally:
        cli._dispatch = real
    return cli._split(seen[0].items)


def _check_launch(cmd: str) -> None:
    from wsrl_dist.config import load  # the real config system: unknown keys / wrong types raise

    paths, sets = _launch_args(cmd)
    assert paths and all((ROOT / p).is_file() for p in paths), paths
    load([ROOT / p for p in paths], sets)


# --- Ray cluster launcher -----------------------------------------------------------------------

def test_ray_cluster_yaml_validates_against_rays_schema_before_and_after_defaults():
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = _load("deploy/ray/cluster.yaml")
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(cfg, schema)  # the file as written (no unknown keys anywhere)
    full = prepare_config(cfg)  # merged with Ray's AWS defaults, as `ray up` does
    validate_config(full)
    assert full["head_node_type"] in full["available_node_types"]


def test_ray_cluster_installs_cuda_torch_on_the_gpu_head_and_cpu_torch_on_workers_first():
    cfg = _load("deploy/ray/cluster.yaml")
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["node_config"]["InstanceType"].startswith(("g", "p"))  # AWS GPU families
    workers = [v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]]
    assert workers and all(w["node_config"]["InstanceType"].startswith(("c", "m")) for w in workers)
    cpu_torch = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
    for cmds in [cfg["worker_setup_commands"], *[w["worker_setup_commands"] for w in workers]]:
        assert cmds[0] == cpu_torch and cmds[-1].endswith("pip install -e .")
    assert cfg["head_setup_commands"][0] == "pip install torch==2.13.0"
    assert cfg["head_setup_commands"][-1].endswith("pip install -e .")
    # The code the setup commands install is the repo the launcher syncs.
    assert "~/wsrl_dist" in cfg["file_mounts"] and all("cd ~/wsrl_dist" in c for c in cfg["head_setup_commands"][1:])


def test_job_submit_script_is_valid_bash_and_its_overrides_are_real_config_keys():
    script = (DEPLOY / "ray" / "job_submit.sh").read_text()
    subprocess.run(["bash", "-n", str(DEPLOY / "ray" / "job_submit.sh")], check=True)
    assert os.access(DEPLOY / "ray" / "job_submit.sh", os.X_OK)
    assert "ray job submit" in script and "--working-dir ." in script
    code = "\n".join(ln for ln in script.splitlines() if not ln.lstrip().startswith("#"))
    launch = re.search(r"-- (wsrl-dist launch [^\n]*)", code).group(1)
    # the script's own arguments and its default config, as the CLI receives them
    fixed = launch.replace('"${args[@]}"', "").strip()
    _check_launch(fixed + " configs/runtime/cluster.yaml")
    _check_launch(fixed + " configs/runtime/smoke.yaml task.name=pendulum-v1")
    assert "--set" not in code  # `wsrl-dist launch` takes k=v overrides, no --set option


# --- KubeRay ------------------------------------------------------------------------------------

def _cluster_specs() -> list[tuple[str, dict]]:
    rc, rj = _load("deploy/kuberay/raycluster.yaml"), _load("deploy/kuberay/rayjob.yaml")
    return [("raycluster", rc["spec"]), ("rayjob", rj["spec"]["rayClusterSpec"])]


def test_kuberay_manifests_have_kind_api_version_and_string_ray_start_params():
    rc, rj = _load("deploy/kuberay/raycluster.yaml"), _load("deploy/kuberay/rayjob.yaml")
    assert (rc["apiVersion"], rc["kind"]) == ("ray.io/v1", "RayCluster")
    assert (rj["apiVersion"], rj["kind"]) == ("ray.io/v1", "RayJob")
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    ray_version = re.search(r"ARG RAY_VERSION=(\S+)", dockerfile).group(1)
    for name, spec in _cluster_specs():
        assert spec["rayVersion"] == ray_version, name
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        for g in groups:
            # KubeRay's CRD types rayStartParams as map[string]string: a YAML number is rejected.
            assert all(isinstance(v, str) for v in g["rayStartParams"].values()), (name, g["rayStartParams"])
        assert spec["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"


def test_kuberay_head_has_a_gpu_and_workers_are_cpu_pods():
    for name, spec in _cluster_specs():
        head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
        assert int(head["resources"]["limits"]["nvidia.com/gpu"]) >= 1, name
        assert head["image"].endswith("-gpu")
        assert any(p["containerPort"] == 9464 for p in head["ports"])  # the job's exporter
        for g in spec["workerGroupSpecs"]:
            assert g["groupName"] and g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
            c = g["template"]["spec"]["containers"][0]
            assert "nvidia.com/gpu" not in c["resources"].get("limits", {}), name
            assert not c["image"].endswith("-gpu")
        for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
            pod = g["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True
            shm = [v for v in pod["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"]
            assert shm and any(m["mountPath"] == "/dev/shm" for m in pod["containers"][0]["volumeMounts"])


def test_rayjob_entrypoint_launches_with_valid_overrides_and_a_parseable_runtime_env():
    spec = _load("deploy/kuberay/rayjob.yaml")["spec"]
    assert spec["entrypoint"].startswith("wsrl-dist launch configs/wsrl.yaml task.name=")
    _check_launch(spec["entrypoint"])
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert isinstance(env, dict) and set(env) <= {"working_dir", "excludes", "env_vars", "pip", "py_modules"}
    assert all(isinstance(v, str) for v in env["env_vars"].values())  # Ray requires string env values
    # The working_dir is where the head image installed the repo (docker/Dockerfile.gpu WORKDIR).
    assert f"WORKDIR {env['working_dir']}" in (ROOT / "docker" / "Dockerfile.gpu").read_text()
    assert spec["shutdownAfterJobFinishes"] is True


# --- Prometheus and lint ------------------------------------------------------------------------

def test_prometheus_config_scrapes_the_exporter_and_rays_service_discovery_file():
    cfg = _load("deploy/prometheus/prometheus.yml")
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert jobs["wsrl"]["static_configs"][0]["targets"] == ["127.0.0.1:9464"]
    from wsrl_dist.runtime_config import RuntimeConfig

    assert RuntimeConfig().metrics_port == 9464 and RuntimeConfig().metrics_host == "127.0.0.1"
    assert jobs["ray"]["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]
    promtool = _tool("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (apt-get install -y prometheus)")
    r = subprocess.run([promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_yamllint_passes_strictly_on_deploy_and_without_errors_on_configs():
    yamllint = _tool("yamllint")
    if yamllint is None:
        pytest.skip("yamllint not installed (pip install -e .[dev])")
    cfg = str(ROOT / ".yamllint")
    r = subprocess.run([yamllint, "-c", cfg, "--strict", "-f", "parsable", str(DEPLOY)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    if (ROOT / "configs").is_dir():
        r = subprocess.run([yamllint, "-c", cfg, "-f", "parsable", str(ROOT / "configs")],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
