"""The internal messenger's HTTP API, under /chat."""

from __future__ import annotations

from litestar import Router

from relaybox.api.chat.attachments import AttachmentController
from relaybox.api.chat.conversations import ChannelController, ConversationController
from relaybox.api.chat.devices import DeviceController
from relaybox.api.chat.messages import ChatMessageController, SearchController
from relaybox.api.chat.stream_tickets import StreamTicketController


def chat_router() -> Router:
    return Router(
        path="/chat",
        route_handlers=[
            ConversationController,
            ChannelController,
            ChatMessageController,
            SearchController,
            DeviceController,
            AttachmentController,
            StreamTicketController,
        ],
    )
