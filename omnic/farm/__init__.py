"""`omnic farm MATRIX`: a matrix of specs x device presets x quantization presets compiled on
Ray, with a report.

- `matrix.py`      — the matrix file's pydantic model and its located errors (torch-free);
- `cells.py`       — its cells: each a spec with the overrides and axis values merged in,
                     checked and planned torch-free, written as OUT/cells/<id>/spec.yaml;
- `task.py`        — one cell's work inside a Ray task: compile, summary, optional bench;
- `scheduler.py`   — Ray: a local instance or a cluster, one task per cell with its memory;
- `summary.py`     — what the report takes from a manifest and a bench run;
- `report.py`      — the cells' records, report.json and report.md;
- `report_html.py` — report.html (a table and an inline SVG chart), `report_format.py` the
                     number formats both share;
- `run.py`         — `run_farm`, the stages above in order.

Ray is imported only by the functions that talk to it: the matrix and its cells import without
Ray or torch.
"""

from omnic.farm.matrix import Matrix, MatrixError, load_matrix
from omnic.farm.run import FarmResult, FarmSettings, run_farm

__all__ = ["FarmResult", "FarmSettings", "Matrix", "MatrixError", "load_matrix", "run_farm"]
