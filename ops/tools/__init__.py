"""The operator tools: the `alertbridge` CLI, the DLQ and history commands, status, and
the local stack (`alertbridge up`). Never imported by the ingress or the worker."""
