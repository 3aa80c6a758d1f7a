"""The Prometheus of the local stack: its scrape config follows the stack's ports."""

from __future__ import annotations

import json
from pathlib import Path

from clawstream.config import Settings
from clawstream.deploy.local import prometheus


def test_every_process_of_the_stack_is_scraped(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, worker_web_port=41000, worker_count=3,
                        gateway_port=41100, ray_metrics_port=41200,
                        prometheus_scrape_interval_s=2.5)
    config = prometheus.scrape_config(settings)
    targets = {job["job_name"]: job["static_configs"][0]["targets"]
               for job in config["scrape_configs"]}
    assert targets == {"worker": ["127.0.0.1:41000", "127.0.0.1:41001", "127.0.0.1:41002"],
                       "gateway": ["127.0.0.1:41100"], "serve": ["127.0.0.1:41200"]}
    assert config["global"]["scrape_interval"] == "2.5s"
    assert json.loads(json.dumps(config)) == config  # written as JSON, which YAML reads


def test_command_listens_on_loopback_and_keeps_its_data_in_the_state_dir(
        tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, prometheus_port=41300)
    cmd = prometheus.command(settings, "/usr/bin/prometheus")
    assert cmd[0] == "/usr/bin/prometheus"
    assert "--web.listen-address=127.0.0.1:41300" in cmd
    assert f"--storage.tsdb.path={tmp_path / 'prometheus' / 'data'}" in cmd
    assert f"--config.file={tmp_path / 'prometheus' / 'prometheus.yml'}" in cmd


def test_the_config_is_rewritten_only_when_the_stack_changed(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path, worker_count=1)
    assert prometheus.write_config(settings)
    assert not prometheus.write_config(settings)
    assert prometheus.write_config(settings.model_copy(update={"worker_count": 2}))
