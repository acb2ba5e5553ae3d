"""Numbers the farm's conftest and tests share (conftest modules are not importable by name)."""

GIB = 1 << 30
NODE_MEMORY = 2 * GIB  # each test node's `memory` resource: a tiny compile fits, BIG's does not
OBJECT_STORE = 80 * (1 << 20)
SMALL_DEVICE = "farm_watch_32mb"
SMALL_BUDGET_MB = 32
