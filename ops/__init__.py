"""Operations: `ops.platform` (what every process shares) and `ops.tools` (what an
operator runs). The ingress and the worker import the platform only."""
