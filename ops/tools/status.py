"""`alertbridge status`: the streams and consumers as the server sees them right now.

The reading itself is ops.platform.queues, shared with the console.
"""

from __future__ import annotations

from ops.platform.queues import ConsumerStatus, Status, StreamStatus, status

__all__ = ["ConsumerStatus", "Status", "StreamStatus", "status"]
