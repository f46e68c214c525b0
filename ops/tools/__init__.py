"""The operator tools: the `alertbridge` CLI (the DLQ, the kill switch, status, and the
views the projector keeps: orders, alerts, positions) and the local stack (`alertbridge
up`). Never imported by the ingress or the worker."""
