"""Past one machine (issue 15): `camrt batch` on Ray Data (`camrt.scale.batch`) and `camrt serve`
on Ray Serve (`camrt.scale.serve`).

Ray is an optional dependency (`pip install camrt[scale]`): it is imported inside the functions
that use it, so `import camrt`, the engine and this package's import stay free of it.
"""

from __future__ import annotations

from camrt.scale.batch import BatchSummary, batch, list_source, read_results
from camrt.scale.serve import Explainer, Service, serve

__all__ = ["BatchSummary", "Explainer", "Service", "batch", "list_source", "read_results", "serve"]
