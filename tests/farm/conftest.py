"""A real local Ray cluster for the farm's tests: a head and one worker node, one CPU and
NODE_MEMORY of `memory` resource each, started once per module and shut down after it.

The specs are the suite's tiny spec (tests/tiny_specs.py) written as files; a preset folder on
$OMNIC_PRESET_PATH adds a device far too small for any model (the farm forwards OMNIC_*
variables to its Ray tasks, which compile against the same presets).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from farm_params import NODE_MEMORY, OBJECT_STORE, SMALL_BUDGET_MB, SMALL_DEVICE


@pytest.fixture(scope="module")
def preset_dir(tmp_path_factory) -> Path:
    """$OMNIC_PRESET_PATH with one device preset whose budget no model fits."""
    root = tmp_path_factory.mktemp("farm-presets")
    (root / "devices").mkdir()
    device = {"name": SMALL_DEVICE, "memory_budget_mb": SMALL_BUDGET_MB, "bandwidth_gbps": 4.0,
              "os": "linux", "arch": "x86_64"}
    (root / "devices" / f"{SMALL_DEVICE}.yaml").write_text(
        "# source: a test device, far too small for any model\n" + yaml.safe_dump(device),
        encoding="utf-8")
    before = os.environ.get("OMNIC_PRESET_PATH")
    os.environ["OMNIC_PRESET_PATH"] = str(root)
    yield root
    if before is None:
        os.environ.pop("OMNIC_PRESET_PATH", None)
    else:
        os.environ["OMNIC_PRESET_PATH"] = before


@pytest.fixture(scope="module")
def ray_cluster():
    """Head + one worker node, started by this test module (a real Ray cluster, not a mock)."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    from ray.cluster_utils import Cluster

    node = {"num_cpus": 1, "memory": NODE_MEMORY, "object_store_memory": OBJECT_STORE}
    cluster = Cluster(initialize_head=True,
                      head_node_args={**node, "include_dashboard": False})
    try:
        cluster.add_node(**node)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()
