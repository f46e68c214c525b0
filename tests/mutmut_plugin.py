"""A pytest plugin for `just mutate` only (`-p tests.mutmut_plugin`, set in [tool.mutmut]).

Under mutation the machine is loaded and every call goes through mutmut's trampoline,
so Hypothesis' 200 ms deadline would "kill" mutants by timing alone; and a mutant's
verdict must not depend on which examples a random run drew. The normal suite keeps
Hypothesis' defaults.
"""

from __future__ import annotations

from hypothesis import settings

settings.register_profile("mutmut", deadline=None, derandomize=True)
settings.load_profile("mutmut")
