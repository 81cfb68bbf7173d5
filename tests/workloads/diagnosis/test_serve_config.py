"""Every shipped Serve config validates, with Serve's schema and with the app's own arguments."""

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from medray.broker.lanes import LANE_PREFIXES
from medray.cli.serve import resolve_config
from workloads.diagnosis.app import deployment_options
from workloads.diagnosis.config import DiagnosisArgs

REPO = Path(__file__).resolve().parents[3]
CONFIGS = sorted((REPO / "deploy").glob("serve-*.yaml"))
APP_ARGS = {"workloads.diagnosis:app": DiagnosisArgs, "workloads.diagnosis:emergency_app": DiagnosisArgs}


def test_there_is_a_serve_config():
    assert REPO / "deploy" / "serve-diagnosis.yaml" in CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_serve_config_is_valid(path):
    config = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    for app in config.applications:
        assert app.import_path in APP_ARGS, f"{app.import_path}: add its argument model to APP_ARGS"
        args = APP_ARGS[app.import_path].model_validate(app.args)
        options = deployment_options(args)  # placement computed by medray.scheduling
        assert set(options) == {"ingress", "emergency", "catalog"}
        # Placement lives in the app builder, not in the file.
        assert all("ray_actor_options" not in d.model_dump(exclude_unset=True) for d in app.deployments)


def test_each_lane_is_an_application_with_its_own_route_and_the_same_args():
    config = ServeDeploySchema.model_validate(yaml.safe_load((REPO / "deploy" / "serve-diagnosis.yaml").read_text()))
    apps = {app.import_path: app for app in config.applications}
    routine, emergency = apps["workloads.diagnosis:app"], apps["workloads.diagnosis:emergency_app"]
    assert routine.args == emergency.args
    args = DiagnosisArgs.model_validate(routine.args)
    assert (routine.name, routine.route_prefix) == (args.app_name, "/")
    assert (emergency.name, emergency.route_prefix) == (args.emergency_app_name, LANE_PREFIXES["emergency"])


def test_medray_serve_overrides_args_and_port_and_revalidates(tmp_path):
    config = resolve_config(REPO / "deploy" / "serve-diagnosis.yaml",
                            args={"registry": "/data/registry"}, port=8123)
    assert config["http_options"]["port"] == 8123
    assert config["applications"][0]["args"]["registry"] == "/data/registry"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**config, "proxy_location": "Nowhere"}))
    with pytest.raises(Exception, match="invalid"):
        resolve_config(bad)
