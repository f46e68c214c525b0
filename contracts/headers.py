"""Header names used on the streams."""

from typing import Final

MSG_ID: Final = "Nats-Msg-Id"
